"""Reusable test support: real mail servers (Dovecot, aiosmtpd), a test CA, free ports.

Register the fixtures in the root conftest (tlsca first: the others import it)::

    pytest_plugins = ["tests.support.tlsca", "tests.support.dovecot", "tests.support.smtpd"]

or import them into a test module: ``from tests.support.dovecot import dovecot``.
"""

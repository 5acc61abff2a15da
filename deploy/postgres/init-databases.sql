-- One database per Mailroom service (MAILROOM_DATABASE_URL .../mailroom_{service}).
-- Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d),
-- as POSTGRES_USER, who then owns them. Used by deploy/postgres (Kubernetes dev overlay) and
-- docker-compose.yml.
CREATE DATABASE mailroom_registry;
CREATE DATABASE mailroom_authz;
CREATE DATABASE mailroom_sync;
CREATE DATABASE mailroom_sender;
CREATE DATABASE mailroom_audit;

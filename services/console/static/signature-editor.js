// Mailroom console: the signature editor on a mailbox's page. A contenteditable area with a
// toolbar (WAI-ARIA toolbar and menu button patterns: one Tab stop, arrow keys inside), kept in
// step with the form's HTML textarea — the only field submitted, and all there is without
// script. Each change fires `signature-changed` on the textarea; htmx posts the draft to the
// console (debounced) and swaps in the registry's rendering. The registry sanitises what is
// saved; `clean` below only keeps the editor itself free of active content.
(function () {
  "use strict";

  var TAGS = {
    a: ["href", "title"], b: [], strong: [], i: [], em: [], u: [], s: [], br: [], p: ["align"],
    div: ["align"], span: [], small: [], big: [], sub: [], sup: [], hr: [], ul: [], ol: [],
    li: [], blockquote: [], h1: [], h2: [], h3: [], h4: [], table: ["width", "border"],
    thead: [], tbody: [], tr: [], td: ["colspan", "rowspan", "align"],
    th: ["colspan", "rowspan", "align"], img: ["src", "alt", "width", "height"],
    font: ["color", "size", "face"], center: []
  };
  var DROP = /^(script|style|iframe|frame|frameset|object|embed|form|input|button|select|textarea|noscript|template|title|meta|link|base|svg|math|video|audio|canvas)$/;
  var LINK = /^(https?:|mailto:|tel:)/i;
  var IMAGE = /^(data:image\/(png|gif|jpeg|webp);base64,|cid:)/i;

  // After DOMContentLoaded, when htmx (loaded first) has processed the page and will hear the
  // first `signature-changed`.
  function ready(fn) {
    if (document.readyState === "complete") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  function cleanNode(node, into) {
    Array.prototype.forEach.call(node.childNodes, function (child) {
      if (child.nodeType === 3) { into.appendChild(document.createTextNode(child.nodeValue)); return; }
      if (child.nodeType !== 1) return; // comments and the like
      var tag = child.tagName.toLowerCase();
      if (DROP.test(tag)) return;
      if (!Object.prototype.hasOwnProperty.call(TAGS, tag)) { cleanNode(child, into); return; }
      var el = document.createElement(tag);
      TAGS[tag].forEach(function (name) {
        var value = child.getAttribute(name);
        if (value === null) return;
        if (name === "href" && !LINK.test(value.trim())) return;
        if (tag === "img" && name === "src" && !IMAGE.test(value.trim())) return;
        el.setAttribute(name, value);
      });
      cleanNode(child, el);
      into.appendChild(el);
    });
    return into;
  }

  // HTML → a fragment of allowed elements and attributes (parsed inertly: nothing runs or loads).
  function clean(html) {
    var doc = new DOMParser().parseFromString("<!doctype html><body>" + html, "text/html");
    return cleanNode(doc.body, document.createDocumentFragment());
  }

  function escapeHtml(text) {
    var div = document.createElement("div");
    div.textContent = text;
    return div.innerHTML;
  }

  function Editor(form) {
    this.form = form;
    this.area = form.querySelector("#sig-editor");
    this.source = form.querySelector("#sig-html");
    this.toolbar = form.querySelector("[role=toolbar]");
    this.buttons = Array.prototype.slice.call(this.toolbar.querySelectorAll(":scope > button, :scope > .sig-menu > button"));
    this.menuButton = form.querySelector("[data-sig-menu]");
    this.menu = form.querySelector("#sig-ph-menu");
    this.items = Array.prototype.slice.call(this.menu.querySelectorAll("[role=menuitem]"));
    this.linkBox = form.querySelector("[data-sig-link]");
    this.linkInput = form.querySelector("#sig-link-url");
    this.range = null;
    this.lastEdit = "source";
  }

  Editor.prototype.start = function () {
    var self = this;
    Array.prototype.forEach.call(document.querySelectorAll("[data-sig-editor], [data-sig-live], [data-sig-edit]"),
      function (el) { el.hidden = false; });
    Array.prototype.forEach.call(this.form.querySelectorAll("[data-sig-nojs]"), function (el) { el.hidden = true; });
    this.source.rows = 4;
    try { document.execCommand("styleWithCSS", false, false); } catch (e) { /* older engines */ }
    this.load(this.source.value);

    // The caret is remembered as it moves (selectionchange, queued) and also at once after an
    // edit and when focus leaves: Enter then Shift+Tab to the toolbar comes faster than the
    // queued selectionchange, and a placeholder went in where the caret had been before Enter.
    this.area.addEventListener("input", function () { self.remember(); self.fromEditor(); });
    this.area.addEventListener("focusout", function () { self.remember(); });
    this.area.addEventListener("keydown", function (ev) { self.shortcut(ev); });
    this.area.addEventListener("paste", function (ev) { self.paste(ev); });
    this.source.addEventListener("input", function () {
      self.lastEdit = "source";
      self.area.replaceChildren(clean(self.source.value));
      self.changed();
    });
    document.addEventListener("selectionchange", function () { self.remember(); self.state(); });
    this.form.addEventListener("submit", function () { if (self.lastEdit === "editor") self.sync(); });

    this.toolbar.addEventListener("mousedown", function (ev) {
      if (ev.target.closest("button")) ev.preventDefault(); // keep the selection in the editor
    });
    this.toolbar.addEventListener("click", function (ev) {
      var button = ev.target.closest("button[data-sig-cmd]");
      if (button) self.command(button.getAttribute("data-sig-cmd"));
    });
    this.toolbar.addEventListener("keydown", function (ev) { self.roving(ev); });
    this.menuButton.addEventListener("click", function () {
      if (self.menu.hidden) self.openMenu(0); else self.closeMenu(true);
    });
    this.menuButton.addEventListener("keydown", function (ev) {
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        self.openMenu(ev.key === "ArrowDown" ? 0 : self.items.length - 1);
      }
    });
    this.menu.addEventListener("keydown", function (ev) { self.menuKeys(ev); });
    this.menu.addEventListener("mousedown", function (ev) { ev.preventDefault(); });
    this.menu.addEventListener("click", function (ev) {
      var item = ev.target.closest("[role=menuitem]");
      if (item) self.insertPlaceholder(item);
    });
    document.addEventListener("click", function (ev) {
      if (!self.menu.hidden && !ev.target.closest(".sig-menu")) self.closeMenu(false);
    });

    this.linkInput.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") { ev.preventDefault(); self.addLink(); }
      if (ev.key === "Escape") { ev.preventDefault(); self.closeLink(); }
    });
    this.form.querySelector("[data-sig-link-add]").addEventListener("click", function () { self.addLink(); });
    this.form.querySelector("[data-sig-link-cancel]").addEventListener("click", function () { self.closeLink(); });

    Array.prototype.forEach.call(document.querySelectorAll("[data-sig-edit]"), function (button) {
      button.addEventListener("click", function () {
        self.form.querySelector("#sig-name").value = button.getAttribute("data-sig-edit");
        self.source.value = button.getAttribute("data-sig-html");
        self.load(self.source.value);
        self.area.focus();
        self.form.scrollIntoView({ block: "start" });
      });
    });
  };

  Editor.prototype.load = function (html) {
    this.lastEdit = "source";
    this.area.replaceChildren(clean(html));
    this.changed();
  };

  // The editor's HTML, or "" when nothing visible is left (a lone <br> after deleting all).
  Editor.prototype.html = function () {
    var empty = !this.area.textContent.trim() && !this.area.querySelector("img, hr");
    if (empty) return "";
    var holder = document.createElement("div");
    holder.appendChild(clean(this.area.innerHTML));
    return holder.innerHTML;
  };

  Editor.prototype.sync = function () { this.source.value = this.html(); };

  Editor.prototype.fromEditor = function () {
    this.lastEdit = "editor";
    this.sync();
    this.changed();
  };

  Editor.prototype.changed = function () {
    this.state();
    this.source.dispatchEvent(new CustomEvent("signature-changed", { bubbles: true }));
  };

  Editor.prototype.inside = function (node) {
    return !!node && (node === this.area || this.area.contains(node));
  };

  Editor.prototype.remember = function () {
    var sel = window.getSelection();
    if (sel && sel.rangeCount && this.inside(sel.getRangeAt(0).commonAncestorContainer)) {
      this.range = sel.getRangeAt(0).cloneRange();
    }
  };

  // Focus back in the editor with the selection it had (the end when it never had one).
  Editor.prototype.restore = function () {
    this.area.focus();
    var sel = window.getSelection();
    var range = this.range;
    if (!range || !this.inside(range.commonAncestorContainer)) {
      range = document.createRange();
      range.selectNodeContents(this.area);
      range.collapse(false);
    }
    sel.removeAllRanges();
    sel.addRange(range);
  };

  Editor.prototype.state = function () {
    var active = this.inside(document.activeElement) || this.toolbar.contains(document.activeElement);
    Array.prototype.forEach.call(this.toolbar.querySelectorAll("[aria-pressed]"), function (b) {
      var on = false;
      if (active) { try { on = document.queryCommandState(b.getAttribute("data-sig-cmd")); } catch (e) { on = false; } }
      b.setAttribute("aria-pressed", on ? "true" : "false");
    });
  };

  Editor.prototype.command = function (name) {
    if (name === "link") { this.openLink(); return; }
    this.restore();
    document.execCommand(name, false, null);
    this.fromEditor();
  };

  Editor.prototype.shortcut = function (ev) {
    if (!(ev.ctrlKey || ev.metaKey) || ev.altKey) return;
    var key = ev.key.toLowerCase();
    if (key === "k") { ev.preventDefault(); this.remember(); this.openLink(); }
    if (key === "b" || key === "i" || key === "u") {
      ev.preventDefault();
      document.execCommand({ b: "bold", i: "italic", u: "underline" }[key], false, null);
      this.fromEditor();
    }
  };

  Editor.prototype.paste = function (ev) {
    var data = ev.clipboardData;
    if (!data) return;
    ev.preventDefault();
    var html = data.getData("text/html");
    if (html) {
      var holder = document.createElement("div");
      holder.appendChild(clean(html));
      document.execCommand("insertHTML", false, holder.innerHTML);
    } else {
      document.execCommand("insertText", false, data.getData("text/plain"));
    }
    this.fromEditor();
  };

  // Toolbar: one Tab stop; Left/Right/Home/End move between its buttons.
  Editor.prototype.roving = function (ev) {
    if (ev.target.closest("[role=menu]")) return;
    var i = this.buttons.indexOf(document.activeElement);
    if (i < 0) return;
    var next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: this.buttons.length - 1 }[ev.key];
    if (next === undefined) return;
    ev.preventDefault();
    next = (next + this.buttons.length) % this.buttons.length;
    this.buttons.forEach(function (b, j) { b.tabIndex = j === next ? 0 : -1; });
    this.buttons[next].focus();
  };

  Editor.prototype.openMenu = function (index) {
    this.menu.hidden = false;
    this.menuButton.setAttribute("aria-expanded", "true");
    this.items[index].focus();
  };

  Editor.prototype.closeMenu = function (focusButton) {
    this.menu.hidden = true;
    this.menuButton.setAttribute("aria-expanded", "false");
    if (focusButton) this.menuButton.focus();
  };

  Editor.prototype.menuKeys = function (ev) {
    var i = this.items.indexOf(document.activeElement), n = this.items.length;
    var moves = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: n - 1 };
    if (ev.key in moves) {
      ev.preventDefault();
      this.items[(moves[ev.key] + n) % n].focus();
    } else if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      if (i >= 0) this.insertPlaceholder(this.items[i]);
    } else if (ev.key === "Escape") {
      ev.preventDefault();
      this.closeMenu(true);
    } else if (ev.key === "Tab") {
      this.closeMenu(false);
    }
  };

  Editor.prototype.insertPlaceholder = function (item) {
    this.closeMenu(false);
    this.restore();
    document.execCommand("insertText", false, "{" + item.getAttribute("data-placeholder") + "}");
    this.fromEditor();
  };

  Editor.prototype.openLink = function () {
    this.linkBox.hidden = false;
    this.linkInput.value = "";
    this.linkInput.focus();
  };

  Editor.prototype.closeLink = function () {
    this.linkBox.hidden = true;
    this.restore();
  };

  Editor.prototype.addLink = function () {
    var url = this.linkInput.value.trim();
    if (url && !LINK.test(url)) url = (url.indexOf("@") > 0 && url.indexOf("/") < 0 ? "mailto:" : "https://") + url;
    this.closeLink();
    if (!url) return;
    var sel = window.getSelection();
    if (sel.isCollapsed) {
      document.execCommand("insertHTML", false, '<a href="' + escapeHtml(url).replace(/"/g, "&quot;") + '">' + escapeHtml(url) + "</a>");
    } else {
      document.execCommand("createLink", false, url);
    }
    this.fromEditor();
  };

  ready(function () {
    var form = document.getElementById("sig-form");
    if (!form || !form.querySelector("#sig-editor") || !window.DOMParser || !document.execCommand) return;
    new Editor(form).start();
  });
})();

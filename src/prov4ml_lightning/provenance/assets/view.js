// prov4ml-lightning provenance view: pan/zoom, details, search, levels, lineage.
// Every string from the run is shown with textContent: never parsed as markup.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("prov-data").textContent);
  var stage = document.getElementById("stage");
  var details = document.getElementById("details");
  var search = document.getElementById("search");
  var hits = document.getElementById("hits");
  var upButton = document.getElementById("up");
  var downButton = document.getElementById("down");
  var level = String(data.level);
  var selected = null;
  var views = {};

  function pane(lvl) { return stage.querySelector('.pane[data-level="' + lvl + '"]'); }
  function svgOf(lvl) { return pane(lvl).querySelector("svg"); }
  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (cls) { node.className = cls; }
    return node;
  }

  // -- pan and zoom: the viewBox of each level's SVG ------------------------------------------
  function setup(lvl) {
    var svg = svgOf(lvl);
    var box = svg.viewBox.baseVal;
    var full = { x: box.x, y: box.y, w: box.width, h: box.height };
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    views[lvl] = { svg: svg, full: full, box: { x: full.x, y: full.y, w: full.w, h: full.h } };
    var drag = null;
    svg.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var v = views[lvl];
      var p = toGraph(v, ev.clientX, ev.clientY);
      var f = ev.deltaY < 0 ? 0.8 : 1.25;
      var w = Math.min(Math.max(v.box.w * f, v.full.w / 50), v.full.w * 4);
      var h = v.box.h * (w / v.box.w);
      v.box = { x: p.x - (p.x - v.box.x) * (w / v.box.w), y: p.y - (p.y - v.box.y) * (h / v.box.h), w: w, h: h };
      apply(v);
    }, { passive: false });
    svg.addEventListener("pointerdown", function (ev) {
      drag = { x: ev.clientX, y: ev.clientY, box: Object.assign({}, views[lvl].box), moved: false };
    });
    window.addEventListener("pointermove", function (ev) {
      if (!drag) { return; }
      var v = views[lvl];
      var r = svg.getBoundingClientRect();
      var s = Math.max(v.box.w / r.width, v.box.h / r.height);
      var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; }
      v.box = { x: drag.box.x - dx * s, y: drag.box.y - dy * s, w: drag.box.w, h: drag.box.h };
      apply(v);
    });
    window.addEventListener("pointerup", function () { setTimeout(function () { drag = null; }, 0); });
    svg.addEventListener("click", function (ev) {
      if (drag && drag.moved) { return; }
      var g = ev.target.closest ? ev.target.closest("g.node") : null;
      if (g && data.levels[lvl].nodes[g.id]) { select(g.id); }
    });
    apply(views[lvl]);
  }
  function toGraph(v, cx, cy) {
    var pt = v.svg.createSVGPoint();
    pt.x = cx; pt.y = cy;
    var m = v.svg.getScreenCTM();
    var g = m ? pt.matrixTransform(m.inverse()) : { x: v.box.x, y: v.box.y };
    return { x: g.x, y: g.y };
  }
  function apply(v) { v.svg.setAttribute("viewBox", [v.box.x, v.box.y, v.box.w, v.box.h].join(" ")); }
  function fit() { var v = views[level]; v.box = Object.assign({}, { x: v.full.x, y: v.full.y, w: v.full.w, h: v.full.h }); apply(v); }
  function centerOn(name) {
    var v = views[level];
    var g = document.getElementById(name);
    if (!g || !g.getBBox) { return; }
    var b = g.getBBox();
    var ctm = g.getCTM(), root = v.svg.getCTM();
    var x = b.x + b.width / 2, y = b.y + b.height / 2;
    if (ctm && root) {
      var pt = v.svg.createSVGPoint(); pt.x = x; pt.y = y;
      pt = pt.matrixTransform(root.inverse().multiply(ctm));
      x = pt.x; y = pt.y;
    }
    var w = Math.min(v.full.w, Math.max(b.width * 8, v.full.w / 4));
    var h = v.box.h * (w / v.box.w);
    v.box = { x: x - w / 2, y: y - h / 2, w: w, h: h };
    apply(v);
  }

  // -- details panel -----------------------------------------------------------------------------
  function table(attrs) {
    var t = el("table");
    Object.keys(attrs || {}).forEach(function (k) {
      var tr = el("tr");
      tr.appendChild(el("th", k));
      tr.appendChild(el("td", attrs[k]));
      t.appendChild(tr);
    });
    return t;
  }
  function show(name) {
    var node = data.levels[level].nodes[name];
    details.textContent = "";
    if (!node) { details.appendChild(el("p", "Click a node to see all its attributes.", "hint")); return; }
    details.appendChild(el("h2", node.label));
    details.appendChild(el("p", node.kind + " \u00b7 " + node.type + (node.style ? " \u00b7 " + node.style : ""), "kind"));
    if (!node.members) {
      details.appendChild(el("p", node.id, "ident"));
      details.appendChild(table(node.attrs));
    } else {
      details.appendChild(el("p", node.members.length + (node.more ? " (+" + node.more + " more)" : "") + " records", "kind"));
      node.members.forEach(function (m) {
        var d = el("details");
        d.appendChild(el("summary", m.label));
        d.appendChild(el("p", m.id, "ident"));
        d.appendChild(table(m.attrs));
        details.appendChild(d);
      });
    }
    var rel = el("div", null, "relations");
    data.levels[level].edges.forEach(function (e) {
      if (e[0] === name || e[1] === name) {
        var other = data.levels[level].nodes[e[0] === name ? e[1] : e[0]];
        var line = e[0] === name ? ("\u2192 " + e[2] + " \u2192 " + other.label) : ("\u2190 " + other.label + " " + e[2]);
        rel.appendChild(el("p", line));
      }
    });
    if (rel.childNodes.length) { details.appendChild(el("h3", "relations")); details.appendChild(rel); }
  }
  function select(name) {
    clearMarks("selected");
    selected = name;
    var g = document.getElementById(name);
    if (g) { g.classList.add("selected"); }
    upButton.disabled = downButton.disabled = !name;
    show(name);
  }

  // -- lineage: PROV edges run effect -> cause, so upstream follows them, downstream goes back --
  function lineage(start, upstream) {
    var edges = data.levels[level].edges;
    var seen = {}; seen[start] = true;
    var used = {};
    var todo = [start];
    while (todo.length) {
      var cur = todo.pop();
      edges.forEach(function (e) {
        var from = upstream ? e[0] : e[1], to = upstream ? e[1] : e[0];
        if (from === cur) {
          used[e[3]] = true;
          if (!seen[to]) { seen[to] = true; todo.push(to); }
        }
      });
    }
    return { nodes: seen, edges: used };
  }
  function highlight(set) {
    var svg = svgOf(level);
    svg.classList.add("dimmed");
    svg.querySelectorAll("g.node, g.edge").forEach(function (g) {
      g.classList.toggle("lit", !!(set.nodes[g.id] || set.edges[g.id]));
    });
  }
  function clearMarks(cls) {
    document.querySelectorAll("." + cls).forEach(function (g) { g.classList.remove(cls); });
  }
  function clearAll() {
    clearMarks("lit"); clearMarks("hit");
    document.querySelectorAll("svg.dimmed").forEach(function (s) { s.classList.remove("dimmed"); });
  }

  // -- search ------------------------------------------------------------------------------------
  function find(q) {
    clearMarks("hit");
    q = q.trim().toLowerCase();
    if (!q) { hits.textContent = ""; return []; }
    var nodes = data.levels[level].nodes;
    var found = Object.keys(nodes).filter(function (name) {
      var n = nodes[name];
      var texts = [n.label, n.id].concat((n.members || []).map(function (m) { return m.label; }));
      return texts.some(function (t) { return String(t).toLowerCase().indexOf(q) >= 0; });
    });
    found.forEach(function (name) { var g = document.getElementById(name); if (g) { g.classList.add("hit"); } });
    hits.textContent = found.length + (found.length === 1 ? " match" : " matches");
    return found;
  }

  // -- levels ------------------------------------------------------------------------------------
  function setLevel(lvl) {
    level = String(lvl);
    stage.querySelectorAll(".pane").forEach(function (p) { p.hidden = p.getAttribute("data-level") !== level; });
    document.querySelectorAll("button[data-level]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-level") === level));
    });
    clearAll();
    select(null);
    if (!views[level]) { setup(level); }
    if (search.value) { find(search.value); }
  }

  document.querySelectorAll("button[data-level]").forEach(function (b) {
    b.addEventListener("click", function () { setLevel(b.getAttribute("data-level")); });
  });
  search.addEventListener("input", function () { find(search.value); });
  search.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") { var f = find(search.value); if (f.length) { select(f[0]); centerOn(f[0]); } }
  });
  upButton.addEventListener("click", function () { if (selected) { highlight(lineage(selected, true)); } });
  downButton.addEventListener("click", function () { if (selected) { highlight(lineage(selected, false)); } });
  document.getElementById("clear").addEventListener("click", function () { clearAll(); search.value = ""; hits.textContent = ""; });
  document.getElementById("fit").addEventListener("click", fit);
  // for tests and scripts: the same actions as the buttons
  window.provView = { select: select, lineage: function (name, up) { select(name); highlight(lineage(name, up)); },
                      find: find, setLevel: setLevel, fit: fit, data: data };
  setLevel(level);
})();

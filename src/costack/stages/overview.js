// The overview page's comparisons (costack.stages.report.run_overview): per secondary dataset,
// an overview of the reference on which a click chooses the window, and a view of that window
// where the reference and the secondary before or after co-registration are swiped (a split
// moved by a slider) or flickered, at full resolution where the page embeds it. Plain
// JavaScript on canvases: no network, no library. The data are PNG data URIs in the page's
// JSON block (#costack-data), one per embedded region ("windows") and layer.
(function () {
  'use strict';
  const DATA = JSON.parse(document.getElementById('costack-data').textContent);
  const WINDOWS = DATA.windows;
  const H = DATA.grid.height;
  const W = DATA.grid.width;
  const VIEW = 512; // the view's side in screen pixels

  function load(uri) {
    const im = new Image();
    im.src = uri;
    return im;
  }

  function el(tag, attrs, parent) {
    const e = document.createElement(tag);
    for (const k in attrs) {
      if (k === 'text') e.textContent = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    if (parent) parent.appendChild(e);
    return e;
  }

  const REF = DATA.reference.images.map(load);

  DATA.datasets.forEach(function (ds) {
    const root = document.querySelector(".compare[data-dataset='" + CSS.escape(ds.n) + "']");
    if (!root) return;
    const layers = { reference: REF, before: ds.before.map(load), after: ds.after.map(load) };
    const names = {
      reference: 'reference ' + DATA.reference.key,
      before: ds.key + ' before co-registration',
      after: ds.key + ' after co-registration',
    };
    const ovScale = Math.min(360, Math.max(W, H)) / Math.max(W, H);
    const ov = el('canvas', {
      width: Math.round(W * ovScale), height: Math.round(H * ovScale), class: 'overview',
      title: 'click to choose the window',
    }, root);
    const view = el('canvas', { width: VIEW, height: VIEW, class: 'view' }, root);
    const ctl = el('div', { class: 'controls' }, root);
    el('div', { text: 'Click the overview to choose the window; drag the view to pan.' }, ctl);
    const where = el('div', { class: 'where' }, ctl);
    const selA = el('select', { class: 'layer-a' }, el('label', { text: 'left / A: ' }, ctl));
    const selB = el('select', { class: 'layer-b' }, el('label', { text: 'right / B: ' }, ctl));
    for (const k of ['reference', 'before', 'after']) {
      el('option', { value: k, text: names[k] }, selA);
      el('option', { value: k, text: names[k] }, selB);
    }
    selA.value = 'reference';
    selB.value = 'after';
    const swipe = el('input', { type: 'range', min: 0, max: 1000, value: 500, class: 'swipe' },
      el('label', { text: 'swipe ' }, ctl));
    const zoom = el('select', { class: 'zoom' },
      el('label', { text: 'zoom (screen px per grid px): ' }, ctl));
    for (const z of [1, 2, 4, 8]) el('option', { value: z, text: z + 'x' }, zoom);
    zoom.value = '2';
    const buttons = el('div', {}, ctl);
    const flick = el('button', { type: 'button', class: 'flicker', text: 'flicker A/B' }, buttons);
    const showBefore = el('button', { type: 'button', class: 'show-before', text: 'B = before' },
      buttons);
    const showAfter = el('button', { type: 'button', class: 'show-after', text: 'B = after' },
      buttons);
    const state = { row: H / 2, col: W / 2, timer: null, phase: 0 };

    function span() { // grid pixels the view shows a side
      return VIEW / Number(zoom.value);
    }

    function finest() { // the finest embedded region holding the view's centre
      let best = 0;
      WINDOWS.forEach(function (w, i) {
        if (state.row >= w.row && state.row < w.row + w.height && state.col >= w.col &&
            state.col < w.col + w.width && w.factor < WINDOWS[best].factor) best = i;
      });
      return best;
    }

    function clamp(w) { // keep the view inside the region it is drawn from
      const s = span() / 2;
      const hr = Math.min(s, w.height / 2);
      const hc = Math.min(s, w.width / 2);
      state.row = Math.min(Math.max(state.row, w.row + hr), w.row + w.height - hr);
      state.col = Math.min(Math.max(state.col, w.col + hc), w.col + w.width - hc);
    }

    function drawLayer(ctx, name, i, x0, x1) {
      const w = WINDOWS[i];
      const s = span();
      const r0 = state.row - s / 2;
      const c0 = state.col - s / 2;
      ctx.save();
      ctx.beginPath();
      ctx.rect(x0, 0, x1 - x0, VIEW);
      ctx.clip();
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(layers[name][i], (c0 - w.col) / w.factor, (r0 - w.row) / w.factor,
        s / w.factor, s / w.factor, 0, 0, VIEW, VIEW);
      ctx.restore();
    }

    function label(ctx, text, right) {
      ctx.font = '13px sans-serif';
      ctx.fillStyle = '#fff';
      const x = right ? VIEW - ctx.measureText(text).width - 4 : 4;
      ctx.fillText(text, x, 13);
    }

    function draw() {
      const i = finest();
      const w = WINDOWS[i];
      clamp(w);
      const ctx = view.getContext('2d');
      ctx.fillStyle = '#777';
      ctx.fillRect(0, 0, VIEW, VIEW);
      const a = selA.value;
      const b = selB.value;
      if (state.timer) {
        drawLayer(ctx, state.phase ? b : a, i, 0, VIEW);
      } else {
        const split = Math.round(VIEW * Number(swipe.value) / 1000);
        drawLayer(ctx, a, i, 0, split);
        drawLayer(ctx, b, i, split, VIEW);
        ctx.fillStyle = '#ff0';
        ctx.fillRect(split - 1, 0, 2, VIEW);
      }
      ctx.fillStyle = 'rgba(0,0,0,.6)';
      ctx.fillRect(0, 0, VIEW, 18);
      if (state.timer) {
        label(ctx, state.phase ? 'B: ' + names[b] : 'A: ' + names[a], false);
      } else {
        label(ctx, 'A: ' + names[a], false);
        label(ctx, 'B: ' + names[b], true);
      }
      const s = span();
      const r0 = Math.max(0, Math.round(state.row - s / 2));
      const c0 = Math.max(0, Math.round(state.col - s / 2));
      where.textContent = 'rows ' + r0 + '-' + Math.min(H, Math.round(r0 + s)) + ', cols ' + c0 +
        '-' + Math.min(W, Math.round(c0 + s)) + (w.factor === 1 ? ', full resolution'
          : ', reduced 1:' + w.factor + ' here (full resolution in the outlined windows)');
      const o = ov.getContext('2d');
      o.drawImage(REF[0], 0, 0, ov.width, ov.height);
      o.setLineDash([4, 3]);
      o.strokeStyle = '#0ff';
      o.lineWidth = 1;
      WINDOWS.forEach(function (x) {
        if (x.factor === 1 && WINDOWS.length > 1) {
          o.strokeRect(x.col * ovScale, x.row * ovScale, x.width * ovScale, x.height * ovScale);
        }
      });
      o.setLineDash([]);
      o.strokeStyle = '#ff0';
      o.lineWidth = 2;
      o.strokeRect((state.col - s / 2) * ovScale, (state.row - s / 2) * ovScale, s * ovScale,
        s * ovScale);
      root.dataset.shown = state.timer ? (state.phase ? 'B' : 'A') : 'swipe';
      root.dataset.draws = String(Number(root.dataset.draws || 0) + 1);
    }

    ov.addEventListener('click', function (ev) {
      const r = ov.getBoundingClientRect();
      state.col = (ev.clientX - r.left) * (ov.width / r.width) / ovScale;
      state.row = (ev.clientY - r.top) * (ov.height / r.height) / ovScale;
      draw();
    });
    let drag = null;
    view.addEventListener('pointerdown', function (ev) {
      drag = { x: ev.clientX, y: ev.clientY, row: state.row, col: state.col };
      view.setPointerCapture(ev.pointerId);
    });
    view.addEventListener('pointermove', function (ev) {
      if (!drag) return;
      const z = Number(zoom.value);
      state.col = drag.col - (ev.clientX - drag.x) / z;
      state.row = drag.row - (ev.clientY - drag.y) / z;
      draw();
    });
    view.addEventListener('pointerup', function () { drag = null; });
    [selA, selB, swipe, zoom].forEach(function (x) { x.addEventListener('input', draw); });
    showBefore.addEventListener('click', function () { selB.value = 'before'; draw(); });
    showAfter.addEventListener('click', function () { selB.value = 'after'; draw(); });
    flick.addEventListener('click', function () {
      if (state.timer) {
        clearInterval(state.timer);
        state.timer = null;
        flick.textContent = 'flicker A/B';
      } else {
        state.timer = setInterval(function () { state.phase = 1 - state.phase; draw(); }, 600);
        flick.textContent = 'stop flicker';
      }
      draw();
    });
    const all = REF.concat(layers.before, layers.after);
    let pending = all.length;
    function loaded() {
      pending -= 1;
      if (pending === 0) draw();
    }
    all.forEach(function (im) {
      if (im.complete) loaded();
      else im.addEventListener('load', loaded);
    });
  });
})();

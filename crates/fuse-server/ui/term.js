// A small terminal for the attach WebSocket (docs/runtime.md): a grid of cells fed by a
// VT100/xterm subset (cursor moves, erase, scroll region, SGR colours; other sequences are
// read and ignored), and keyboard input turned into the bytes a terminal sends.
'use strict';

class FuseTerm {
  constructor(box, cols, rows) {
    this.box = box;
    this.pre = document.createElement('pre');
    this.input = document.createElement('textarea');
    this.input.setAttribute('aria-label', 'terminal input');
    this.input.setAttribute('autocapitalize', 'off');
    this.input.setAttribute('autocomplete', 'off');
    this.input.setAttribute('spellcheck', 'false');
    box.append(this.pre, this.input);
    this.onData = () => {};
    this.decoder = new TextDecoder('utf-8');
    this.resize(cols, rows);
    this.pending = '';
    this.fg = null;
    this.input.addEventListener('keydown', (e) => this.key(e));
    this.input.addEventListener('input', () => {
      if (this.input.value) { this.onData(this.input.value.replace(/\n/g, '\r')); }
      this.input.value = '';
    });
    this.input.addEventListener('paste', (e) => {
      e.preventDefault();
      this.onData((e.clipboardData.getData('text') || '').replace(/\r?\n/g, '\r'));
    });
    this.input.addEventListener('focus', () => box.classList.add('focused'));
    this.input.addEventListener('blur', () => box.classList.remove('focused'));
    this.render();
  }

  resize(cols, rows) {
    this.cols = Math.max(10, cols | 0);
    this.rows = Math.max(3, rows | 0);
    this.grid = [];
    for (let i = 0; i < this.rows; i++) { this.grid.push(this.blank()); }
    this.cx = 0; this.cy = 0; this.top = 0; this.bottom = this.rows - 1; this.saved = [0, 0];
    this.scrollback = [];
  }

  blank() { return Array.from({ length: this.cols }, () => [' ', null]); }

  // The whole visible text, rows joined by newlines (for tests and copy).
  text() { return this.scrollback.concat(this.grid).map((r) => r.map((c) => c[0]).join('').replace(/\s+$/, '')).join('\n'); }

  write(bytes) {
    const s = typeof bytes === 'string' ? bytes : this.decoder.decode(bytes, { stream: true });
    this.pending += s;
    let i = 0;
    const p = this.pending;
    while (i < p.length) {
      const ch = p[i];
      if (ch === '\x1b') {
        const n = this.escape(p, i);
        if (n === 0) { break; } // incomplete: wait for more bytes
        i += n;
        continue;
      }
      this.put(ch);
      i++;
    }
    this.pending = p.slice(i);
    this.scheduleRender();
  }

  put(ch) {
    switch (ch) {
      case '\r': this.cx = 0; return;
      case '\n': case '\x0b': case '\x0c': this.lf(); return;
      case '\b': if (this.cx > 0) { this.cx--; } return;
      case '\t': this.cx = Math.min(this.cols - 1, (this.cx + 8) & ~7); return;
      case '\x07': case '\x00': case '\x0e': case '\x0f': return;
      default:
        if (ch < ' ') { return; }
        if (this.cx >= this.cols) { this.cx = 0; this.lf(); }
        this.grid[this.cy][this.cx] = [ch, this.fg];
        this.cx++;
    }
  }

  lf() {
    if (this.cy === this.bottom) { this.scrollUp(1); } else if (this.cy < this.rows - 1) { this.cy++; }
  }

  scrollUp(n) {
    for (let k = 0; k < n; k++) {
      const gone = this.grid.splice(this.top, 1)[0];
      if (this.top === 0) { this.scrollback.push(gone); if (this.scrollback.length > 500) { this.scrollback.shift(); } }
      this.grid.splice(this.bottom, 0, this.blank());
    }
  }

  scrollDown(n) {
    for (let k = 0; k < n; k++) {
      this.grid.splice(this.bottom, 1);
      this.grid.splice(this.top, 0, this.blank());
    }
  }

  // Reads one escape sequence at p[i] (ESC); the characters it took, 0 when incomplete.
  escape(p, i) {
    if (i + 1 >= p.length) { return 0; }
    const c = p[i + 1];
    if (c === '[') {
      let j = i + 2;
      while (j < p.length && !(p[j] >= '@' && p[j] <= '~')) { j++; }
      if (j >= p.length) { return 0; }
      this.csi(p.slice(i + 2, j), p[j]);
      return j - i + 1;
    }
    if (c === ']' || c === 'P' || c === '_' || c === '^') { // OSC/DCS: up to BEL or ST
      for (let j = i + 2; j < p.length; j++) {
        if (p[j] === '\x07') { return j - i + 1; }
        if (p[j] === '\x1b' && p[j + 1] === '\\') { return j - i + 2; }
      }
      return 0;
    }
    if (c === '(' || c === ')' || c === '#') { return i + 2 < p.length ? 3 : 0; }
    if (c === '7') { this.saved = [this.cx, this.cy]; }
    if (c === '8') { [this.cx, this.cy] = this.saved; }
    if (c === 'M') { if (this.cy === this.top) { this.scrollDown(1); } else if (this.cy > 0) { this.cy--; } }
    if (c === 'D') { this.lf(); }
    if (c === 'E') { this.cx = 0; this.lf(); }
    if (c === 'c') { this.resize(this.cols, this.rows); }
    return 2;
  }

  csi(params, f) {
    const priv = params.startsWith('?');
    const a = (priv ? params.slice(1) : params).split(';').map((x) => parseInt(x, 10));
    const n = (k, d) => (Number.isNaN(a[k]) || a[k] === undefined || a[k] === 0 ? d : a[k]);
    const clampY = (y) => Math.max(0, Math.min(this.rows - 1, y));
    const clampX = (x) => Math.max(0, Math.min(this.cols - 1, x));
    switch (f) {
      case 'A': this.cy = clampY(this.cy - n(0, 1)); break;
      case 'B': case 'e': this.cy = clampY(this.cy + n(0, 1)); break;
      case 'C': case 'a': this.cx = clampX(this.cx + n(0, 1)); break;
      case 'D': this.cx = clampX(this.cx - n(0, 1)); break;
      case 'E': this.cx = 0; this.cy = clampY(this.cy + n(0, 1)); break;
      case 'F': this.cx = 0; this.cy = clampY(this.cy - n(0, 1)); break;
      case 'G': case '`': this.cx = clampX(n(0, 1) - 1); break;
      case 'd': this.cy = clampY(n(0, 1) - 1); break;
      case 'H': case 'f': this.cy = clampY(n(0, 1) - 1); this.cx = clampX(n(1, 1) - 1); break;
      case 'J': this.eraseDisplay(Number.isNaN(a[0]) ? 0 : a[0]); break;
      case 'K': this.eraseLine(Number.isNaN(a[0]) ? 0 : a[0]); break;
      case 'L': { const t = this.top; this.top = this.cy; this.scrollDown(n(0, 1)); this.top = t; break; }
      case 'M': { const t = this.top; this.top = this.cy; this.scrollUp(n(0, 1)); this.top = t; break; }
      case 'P': { const r = this.grid[this.cy]; r.splice(this.cx, n(0, 1)); while (r.length < this.cols) { r.push([' ', null]); } break; }
      case '@': { const r = this.grid[this.cy]; for (let k = 0; k < n(0, 1); k++) { r.splice(this.cx, 0, [' ', null]); } r.length = this.cols; break; }
      case 'X': for (let k = 0; k < n(0, 1) && this.cx + k < this.cols; k++) { this.grid[this.cy][this.cx + k] = [' ', null]; } break;
      case 'S': this.scrollUp(n(0, 1)); break;
      case 'T': this.scrollDown(n(0, 1)); break;
      case 'r': this.top = clampY(n(0, 1) - 1); this.bottom = clampY(n(1, this.rows) - 1); this.cx = 0; this.cy = this.top; break;
      case 's': this.saved = [this.cx, this.cy]; break;
      case 'u': [this.cx, this.cy] = this.saved; break;
      case 'm': this.sgr(a); break;
      case 'h': case 'l':
        if (priv && (a.includes(1049) || a.includes(47) || a.includes(1047))) { this.eraseDisplay(2); this.cx = 0; this.cy = 0; }
        break;
      default: break; // not drawn by this terminal
    }
  }

  sgr(a) {
    for (let k = 0; k < a.length; k++) {
      const v = Number.isNaN(a[k]) ? 0 : a[k];
      if (v === 0 || v === 39) { this.fg = null; } else if ((v >= 30 && v <= 37) || (v >= 90 && v <= 97)) { this.fg = 'c' + v; } else if (v === 38 || v === 48) { k += a[k + 1] === 5 ? 2 : 4; }
    }
  }

  eraseLine(mode) {
    const r = this.grid[this.cy];
    const [from, to] = mode === 0 ? [this.cx, this.cols] : mode === 1 ? [0, this.cx + 1] : [0, this.cols];
    for (let x = from; x < to && x < this.cols; x++) { r[x] = [' ', null]; }
  }

  eraseDisplay(mode) {
    if (mode === 0) { this.eraseLine(0); for (let y = this.cy + 1; y < this.rows; y++) { this.grid[y] = this.blank(); } }
    else if (mode === 1) { this.eraseLine(1); for (let y = 0; y < this.cy; y++) { this.grid[y] = this.blank(); } }
    else { for (let y = 0; y < this.rows; y++) { this.grid[y] = this.blank(); } if (mode === 3) { this.scrollback = []; } }
  }

  scheduleRender() {
    if (this.raf) { return; }
    this.raf = requestAnimationFrame(() => { this.raf = null; this.render(); });
  }

  render() {
    const frag = document.createDocumentFragment();
    this.grid.forEach((row, y) => {
      let run = ''; let cls = undefined;
      const flush = () => {
        if (!run) { return; }
        const s = document.createElement('span');
        if (cls) { s.className = cls; }
        s.textContent = run; frag.append(s); run = '';
      };
      row.forEach((cell, x) => {
        const c = (y === this.cy && x === this.cx) ? 'cursor' : (cell[1] || '');
        if (c !== cls) { flush(); cls = c; }
        run += cell[0];
      });
      flush();
      if (y < this.rows - 1) { frag.append('\n'); }
    });
    this.pre.replaceChildren(frag);
    this.box.dataset.text = '';
  }

  key(e) {
    const map = {
      Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b',
      ArrowUp: '\x1b[A', ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D',
      Home: '\x1b[H', End: '\x1b[F', Delete: '\x1b[3~', PageUp: '\x1b[5~', PageDown: '\x1b[6~',
    };
    let out = null;
    if (e.ctrlKey && !e.altKey && e.key.length === 1) {
      const c = e.key.toUpperCase().charCodeAt(0);
      if (c >= 64 && c <= 95) { out = String.fromCharCode(c - 64); }
    } else if (map[e.key]) {
      out = map[e.key];
    } else if (e.key.length === 1 && !e.metaKey) {
      out = (e.altKey ? '\x1b' : '') + e.key;
    }
    if (out !== null) { e.preventDefault(); this.onData(out); }
  }

  focus() { this.input.focus(); }
}

window.FuseTerm = FuseTerm;

// The seed's text form of a quote: `OGDC 137.75 Increased By ▲ 4.88 (3.67%)`.
//
// Pure and side-effect free; identical, character for character, to the Python side's
// format_line ("How the ticker reads" in docs/PROTOCOL.md): tests/test_web_format.py
// checks the two against each other on every seed line and on thousands of random quotes.
// Used by the <quote-ticker> widget and by anyone building their own UI.

export const UP = '\u25B2'; // ▲
export const DOWN = '\u25BC'; // ▼
export const INCREASED = 'Increased By';
export const DECREASED = 'Decreased By';
export const NO_CHANGE = 'No Change';

/**
 * Python's `format(x, f".{digits}f")`: the exact binary value rounded half to even.
 * (JavaScript's toFixed rounds exact ties away from zero, e.g. 0.125 -> "0.13" where
 * Python gives "0.12", and 71902.5 -> "71903" where Python gives "71902".)
 */
export function pyFixed(value, digits) {
  const x = Number(value);
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  const negative = x < 0 || Object.is(x, -0);
  const a = Math.abs(x);
  let whole;
  let frac;
  if (a >= 1e21) {
    whole = BigInt(a).toString(); // an integer already: exact
    frac = '';
  } else {
    // Exact for every double whose rounding can matter here: a double >= 2**-47 has at
    // most 99 fractional decimal digits, and smaller ones round to zero anyway.
    const exact = a.toFixed(100);
    const dot = exact.indexOf('.');
    whole = exact.slice(0, dot);
    frac = exact.slice(dot + 1);
  }
  const kept = frac.slice(0, digits).padEnd(digits, '0');
  const rest = frac.slice(digits);
  let digitsStr = whole + kept;
  const first = rest.charCodeAt(0) - 48;
  let up = false;
  if (first > 5) up = true;
  else if (first === 5) {
    up = /[1-9]/.test(rest.slice(1)) || (digitsStr.charCodeAt(digitsStr.length - 1) - 48) % 2 === 1;
  }
  if (up) {
    const chars = digitsStr.split('');
    let i = chars.length - 1;
    while (i >= 0) {
      if (chars[i] === '9') {
        chars[i] = '0';
        i -= 1;
      } else {
        chars[i] = String.fromCharCode(chars[i].charCodeAt(0) + 1);
        break;
      }
    }
    if (i < 0) chars.unshift('1');
    digitsStr = chars.join('');
  }
  const intPart = digitsStr.slice(0, digitsStr.length - digits);
  const fracPart = digitsStr.slice(digitsStr.length - digits);
  return (negative ? '-' : '') + intPart + (digits > 0 ? '.' + fracPart : '');
}

/** Thousands separators as Python's `,` format option (en-US style): 71902 -> "71,902". */
export function groupThousands(text) {
  const m = /^(-?)(\d+)(.*)$/.exec(text);
  if (!m) return text;
  return m[1] + m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ',') + m[3];
}

/** The Python side's `_trim` (quote_core/text.py): 4.90 -> 4.9, 0.00 -> 0, -0.0 -> 0. */
export function trimZeros(text) {
  let t = text;
  if (t.includes('.')) t = t.replace(/0+$/, '').replace(/\.+$/, '');
  return t === '-0' || t === '' ? '0' : t;
}

function num(value) {
  return value === null || value === undefined || value === '' ? NaN : Number(value);
}

/**
 * Python's round(x, 2): half to even on the exact binary value. toFixed rounds the exact
 * value too, so it agrees everywhere but on exact ties at the third decimal, where it goes
 * away from zero; a double is such a tie only when x * 8 is an odd integer (x = k/8), and
 * there pyFixed takes the even hundredth. Fast otherwise: the compact decoder calls it for
 * every quote.
 */
export function round2(value) {
  const x = Number(value);
  if (!Number.isFinite(x) || x === 0) return x; // toFixed drops the sign of -0
  const eighths = x * 8; // exact: a power of two
  if (Number.isInteger(eighths) && Math.abs(eighths % 2) === 1) return Number(pyFixed(x, 2));
  return Number(x.toFixed(2));
}

/**
 * The parts of a quote's text form, each a plain string:
 *   {symbol, kind, direction: 'up'|'down'|'flat', price, words, arrow, change, pct}
 * `arrow` is '' for indices (the seed draws none); `pct` includes the brackets and %.
 * Numbers are first rounded to two decimals and a missing `change` / `change_pct` is
 * derived from `prev_close`, exactly as the Python side's Quote.from_dict does, so the text
 * equals format_line(Quote.from_dict(q)) for any quote the service would accept.
 */
export function formatQuote(q) {
  const price = round2(num(q.price));
  const prev = round2(num(q.prev_close));
  let change = round2(num(q.change));
  if (Number.isNaN(change) && Number.isFinite(price) && Number.isFinite(prev)) {
    change = round2(price - prev);
  }
  let changePct = round2(num(q.change_pct));
  if (Number.isNaN(changePct) && Number.isFinite(price) && Number.isFinite(prev) && prev !== 0) {
    changePct = round2((100 * (price - prev)) / prev);
  }
  const direction = change > 0 ? 'up' : change < 0 ? 'down' : 'flat';
  const words = change > 0 ? INCREASED : change < 0 ? DECREASED : NO_CHANGE;
  const pct = `(${trimZeros(pyFixed(changePct, 2))}%)`;
  const symbol = String(q.symbol);
  if (q.kind === 'index') {
    // The words and colour follow the change as shown: +0.04 reads "0", so "No Change".
    const shown = trimZeros(pyFixed(change, 1));
    const value = Number(shown);
    return {
      symbol, kind: 'index', pct, arrow: '',
      direction: value > 0 ? 'up' : value < 0 ? 'down' : 'flat',
      words: value > 0 ? INCREASED : value < 0 ? DECREASED : NO_CHANGE,
      price: groupThousands(pyFixed(price, 0)),
      change: shown,
    };
  }
  let changeText = pyFixed(change, 2);
  if (changeText === '-0.00') changeText = '0.00';
  return {
    symbol, kind: 'stock', direction, words, pct,
    arrow: change > 0 ? UP : DOWN,
    price: pyFixed(price, 2),
    change: changeText,
  };
}

/** The exact seed line, e.g. `AIRLINK 72.59 Increased By ▲ 3.39 (4.9%)`. */
export function tickerText(q) {
  const p = formatQuote(q);
  return p.kind === 'index'
    ? `${p.symbol} ${p.price} ${p.words} ${p.change} ${p.pct}`
    : `${p.symbol} ${p.price} ${p.words} ${p.arrow} ${p.change} ${p.pct}`;
}

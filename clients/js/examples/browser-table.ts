// A browser table: the global WebSocket, the parts of the text form for the cells.
import { connect, formatQuote, type Quote } from 'quote-stream';
import { isNewer } from 'quote-stream/stream';

const body = document.querySelector<HTMLTableSectionElement>('tbody');
const stream = connect('/ws'); // relative to the page, as ws: or wss:
const rows = new Map<string, HTMLTableRowElement>();

stream.on('quotes', (quotes: Quote[]) => {
  for (const q of quotes) {
    const p = formatQuote(q);
    let row = rows.get(q.symbol);
    if (!row) {
      row = document.createElement('tr');
      rows.set(q.symbol, row);
      body?.append(row);
    }
    row.replaceChildren(...[p.symbol, p.price, `${p.arrow} ${p.change}`, p.pct].map((text) => {
      const cell = document.createElement('td');
      cell.textContent = text;
      return cell;
    }));
    row.className = p.direction;
  }
});
stream.on('status', (feed) => document.body.setAttribute('data-feed', feed));
stream.setSymbols('*');

const held: Quote | undefined = stream.board.get('OGDC');
if (held && !isNewer(held, held)) console.log('a quote is never newer than itself');
window.addEventListener('pagehide', () => stream.close());

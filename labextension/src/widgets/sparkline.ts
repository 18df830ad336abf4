/** A tiny SVG sparkline of a bounded history (no library, theme colours from CSS). */
const SVG = 'http://www.w3.org/2000/svg';

export class History {
  readonly values: number[] = [];
  constructor(private readonly capacity = 60) {}
  push(v: number): void {
    this.values.push(v);
    if (this.values.length > this.capacity) {
      this.values.shift();
    }
  }
}

export function sparkline(values: number[], width = 80, height = 18): SVGSVGElement {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'lx-spark');
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('aria-hidden', 'true');
  if (values.length > 1) {
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const span = hi - lo || 1;
    const dx = width / (values.length - 1);
    const pts = values.map((v, i) => `${(i * dx).toFixed(1)},${(height - 1 - ((v - lo) / span) * (height - 2)).toFixed(1)}`);
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', pts.join(' '));
    svg.appendChild(line);
  }
  return svg;
}

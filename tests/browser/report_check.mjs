// report_check.mjs - opens a detr-prof report in headless Chromium and checks it:
//   node tests/browser/report_check.mjs REPORT.html SCREENSHOT.png [EXPECTED.json]
// Fails (exit 1) on any console error, page error or failed request; checks that every chart
// container holds a rendered ECharts instance with data, that render() can be called again
// (same instances, same charts: the live dashboard relies on it), and, with EXPECTED.json, that
// the charts hold the database's numbers:
//   {"charts": [ids that must exist],
//    "points": [{"chart", "series", "x", "y"}]            line/scatter data [x, y] (x exact, y within 1e-6 relative)
//    "bars":   [{"chart", "series", "category", "y"}]     bar value of that category
//    "texts":  [strings the page's text must contain]}
// Prints "ok ..." lines and a final "report_check: N checks passed" or the failures.
import { chromium } from 'playwright-core';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [reportPath, shotPath, expectedPath] = process.argv.slice(2);
if (!reportPath || !shotPath) {
  console.error('usage: node report_check.mjs REPORT.html SCREENSHOT.png [EXPECTED.json]');
  process.exit(2);
}
const expected = expectedPath ? JSON.parse(readFileSync(expectedPath, 'utf8')) : {};
const failures = [];
let passed = 0;
function check(name, ok, detail) {
  if (ok) { passed++; console.log('ok   ' + name); } else { failures.push(name + ': ' + detail); console.log('FAIL ' + name + ': ' + detail); }
}
function close(a, b) { return typeof a === 'number' && Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b)); }

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push('console: ' + m.text()); });
  page.on('pageerror', (e) => errors.push('page error: ' + e.message));
  page.on('requestfailed', (r) => errors.push('request failed: ' + r.url()));
  const external = [];
  page.on('request', (r) => { if (!r.url().startsWith('file:') && !r.url().startsWith('data:')) external.push(r.url()); });
  await page.goto(pathToFileURL(resolve(reportPath)).href, { waitUntil: 'load' });
  await page.waitForFunction(() => window.detrReport && typeof window.detrReport.render === 'function', null, { timeout: 15000 });

  // every chart container: an instance, with at least one series holding data
  const info = await page.evaluate(() => {
    const out = {};
    document.querySelectorAll('.chart').forEach((el) => {
      const inst = window.echarts.getInstanceByDom(el);
      if (!inst) { out[el.id] = null; return; }
      const o = inst.getOption();
      out[el.id] = {
        title: (o.title && o.title[0] && o.title[0].text) || '',
        axes: [].concat(o.xAxis || [], o.yAxis || []).map((a) => a.name || ''),
        series: (o.series || []).map((s) => ({ name: s.name, data: (s.data || []).map((d) => (d && d.value !== undefined ? d.value : d)) })),
        categories: [].concat(o.xAxis || [], o.yAxis || []).filter((a) => a.type === 'category').map((a) => a.data)[0] || null,
      };
    });
    return out;
  });
  const ids = Object.keys(info);
  check('charts present', ids.length > 0, 'no chart container in the page');
  for (const id of ids) {
    const c = info[id];
    if (!c) { check(id + ' rendered', false, 'no ECharts instance'); continue; }
    const n = c.series.reduce((k, s) => k + s.data.filter((d) => d !== null && d !== undefined).length, 0);
    check(id + ' has data, a title and axis names', n > 0 && c.title && c.axes.every((a) => a),
      'points=' + n + ' title=' + JSON.stringify(c.title) + ' axes=' + JSON.stringify(c.axes));
  }
  for (const id of expected.charts || []) check('chart ' + id + ' exists', !!info[id], 'missing (have: ' + ids.join(', ') + ')');
  for (const p of expected.points || []) {
    const c = info[p.chart];
    const s = c && c.series.find((x) => x.name === p.series);
    const d = s && s.data.find((v) => Array.isArray(v) && v[0] === p.x);
    check(`${p.chart} / ${p.series} at ${p.x} = ${p.y}`, d && close(d[1], p.y),
      !c ? 'no chart' : !s ? 'no series (have: ' + c.series.map((x) => x.name).join(', ') + ')' : 'found ' + JSON.stringify(d));
  }
  for (const b of expected.bars || []) {
    const c = info[b.chart];
    const s = c && c.series.find((x) => x.name === b.series);
    const i = c && c.categories ? c.categories.indexOf(b.category) : -1;
    check(`${b.chart} / ${b.series} / ${b.category} = ${b.y}`, s && i >= 0 && close(s.data[i], b.y),
      !c ? 'no chart' : !s ? 'no series' : i < 0 ? 'no category' : 'found ' + s.data[i]);
  }
  const text = await page.evaluate(() => document.body.innerText);
  for (const t of expected.texts || []) check('page shows ' + JSON.stringify(t), text.includes(t), 'not in the page text');

  // render() again with the same document: same instances, same charts, no error
  const again = await page.evaluate(() => {
    const before = {};
    const charts = window.detrReport.charts();
    for (const id in charts) before[id] = charts[id].id;
    const doc = JSON.parse(document.getElementById('detr-report-data').textContent);
    window.detrReport.render(doc);
    window.detrReport.render(doc);
    const after = window.detrReport.charts();
    const same = Object.keys(before).every((id) => after[id] && after[id].id === before[id]);
    return { same, n0: Object.keys(before).length, n1: Object.keys(after).length, cards: document.querySelectorAll('.chart').length };
  });
  check('render() again keeps the charts in place', again.same && again.n0 === again.n1 && again.cards === again.n1,
    JSON.stringify(again));

  // a newer document with one step more updates the throughput chart in place
  const grown = await page.evaluate(() => {
    const doc = JSON.parse(document.getElementById('detr-report-data').textContent);
    const run = doc.runs && doc.runs[0];
    if (!run || !run.steps || !run.steps.step.length) return { skipped: true };
    const s = run.steps, last = s.step.length - 1;
    for (const k in s) if (Array.isArray(s[k])) s[k].push(k === 'step' ? s.step[last] + 1 : s[k][last]);
    const inst = window.detrReport.charts()['chart-throughput'];
    window.detrReport.render(doc);
    const after = window.detrReport.charts()['chart-throughput'];
    const series = after.getOption().series.find((x) => x.name === 'run ' + run.run_id);
    return { same: inst === after, n: series.data.length, want: s.step.length };
  });
  if (!grown.skipped) check('render() with a newer document updates in place', grown.same && grown.n === grown.want, JSON.stringify(grown));

  await page.screenshot({ path: shotPath, fullPage: true });
  check('no console or page errors', errors.length === 0, errors.join(' | '));
  check('no request outside the file', external.length === 0, external.join(' '));
} finally {
  await browser.close();
}
console.log(failures.length ? `report_check: ${failures.length} failed, ${passed} passed` : `report_check: ${passed} checks passed`);
process.exit(failures.length ? 1 : 0);

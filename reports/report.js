/* report.js - renders the detr-prof report document (docs/prof-report.md) with ECharts.
 * window.detrReport.render(doc) may be called again with a newer document (the live dashboard
 * does, every second or two): charts are updated in place, charts that no longer apply are
 * removed, and zoom positions survive. */
(function () {
  'use strict';

  var PHASE_COLORS = {
    data_wait: '#9e9e9e', h2d: '#795548', backbone: '#1f77b4', encoder: '#2ca02c', decoder: '#17becf',
    heads: '#bcbd22', matcher: '#e377c2', loss: '#8c564b', backward: '#d62728', allreduce: '#ff7f0e',
    clip: '#9467bd', optimizer: '#ff9896', other: '#d9d9d9'
  };
  var MAIN_LOSSES = { loss_ce: 1, loss_bbox: 1, loss_giou: 1 };
  var MIB = 1048576;

  var charts = {};   /* chart id -> {card, el, chart} */
  var seen = {};     /* chart ids produced by the current render */

  /* ---- small helpers ---- */
  function num(v) { return typeof v === 'number' && isFinite(v) ? v : null; }
  function fixed(v, d) { return num(v) === null ? '–' : v.toFixed(d); }
  function pct(v, d) { return num(v) === null ? '–' : (100 * v).toFixed(d === undefined ? 1 : d) + ' %'; }
  function mib(v) { return num(v) === null ? '–' : (v / MIB).toFixed(1) + ' MiB'; }
  function ms(v) { return num(v) === null ? '–' : (v < 1 ? v.toFixed(3) : v.toFixed(2)) + ' ms'; }
  function nsToS(v) { return num(v) === null ? '–' : (v / 1e9).toFixed(1) + ' s'; }
  function dateOf(ns) { return num(ns) === null ? '–' : new Date(ns / 1e6).toISOString().replace('T', ' ').slice(0, 19) + ' UTC'; }
  /* "run N", plus the run's own label when its configuration names one ("label": e.g. runs imported
   * from another implementation by bench/fidelity.py) */
  function runLabel(run) {
    var cfg = run.summary && (run.summary.config || run.summary.config_json), label = null;
    if (typeof cfg === 'string') { try { label = JSON.parse(cfg).label; } catch (e) { label = null; } }
    else if (cfg && typeof cfg === 'object') label = cfg.label;
    return 'run ' + run.run_id + (typeof label === 'string' && label ? ' · ' + label : '');
  }
  function arr(o, k) { return o && Array.isArray(o[k]) ? o[k] : []; }
  function pairs(xs, ys) {
    var out = [];
    for (var i = 0; i < xs.length; i++) out.push([xs[i], ys && ys[i] !== undefined ? ys[i] : null]);
    return out;
  }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function hasValues(a) { for (var i = 0; i < a.length; i++) if (num(a[i]) !== null) return true; return false; }

  /* ---- chart building blocks ---- */
  function stepAxis() {
    return { type: 'value', name: 'step', nameLocation: 'middle', nameGap: 26, min: 'dataMin', max: 'dataMax',
      axisLabel: { hideOverlap: true } };
  }
  function valueAxis(name, formatter, extra) {
    var a = { type: 'value', name: name, nameLocation: 'middle', nameGap: 52, scale: true,
      axisLabel: formatter ? { formatter: formatter } : {} };
    for (var k in extra || {}) a[k] = extra[k];
    return a;
  }
  function zoom() {
    return [{ type: 'inside', xAxisIndex: 0, filterMode: 'none' },
            { type: 'slider', xAxisIndex: 0, height: 16, bottom: 4, filterMode: 'none' }];
  }
  function base(title, subtitle) {
    return {
      animation: false,
      title: { text: title, subtext: subtitle || '', left: 8, top: 2, textStyle: { fontSize: 14 } },
      tooltip: { trigger: 'axis', confine: true },
      legend: { type: 'scroll', top: subtitle ? 42 : 26, left: 'center', width: '70%' },
      grid: { left: 74, right: 28, top: subtitle ? 80 : 64, bottom: 58 },
      toolbox: { right: 8, top: 0, feature: { dataZoom: { yAxisIndex: 'none' }, restore: {} } }
    };
  }
  function line(name, data, extra) {
    var s = { type: 'line', name: name, data: data, showSymbol: data.length < 60, symbolSize: 4,
      connectNulls: false, lineStyle: { width: 1.6 }, emphasis: { focus: 'series' } };
    for (var k in extra || {}) s[k] = extra[k];
    return s;
  }
  function bucketNote(run) {
    return run.bucket_steps > 1 ? 'each point: mean of ' + run.bucket_steps + ' steps' : '';
  }
  function runsNote(runs) {
    var b = runs.filter(function (r) { return r.bucket_steps > 1; });
    return b.length ? 'points are means over buckets of ' + b.map(function (r) { return r.bucket_steps; }).join('/') + ' steps' : '';
  }

  /* One series per run of steps.<key> (optionally scaled), plus the bucket maximum (dashed) where
   * a bucket holds several steps. */
  function overlay(runs, part, key, maxKey, scale) {
    var series = [];
    runs.forEach(function (run) {
      var p = run[part];
      if (!p || !hasValues(arr(p, key))) return;
      var ys = scale ? arr(p, key).map(function (v) { return num(v) === null ? null : v * scale; }) : arr(p, key);
      series.push(line(runLabel(run), pairs(arr(p, 'step'), ys)));
      if (maxKey && run.bucket_steps > 1 && hasValues(arr(p, maxKey)))
        series.push(line(runLabel(run) + ' (bucket max)', pairs(arr(p, 'step'), arr(p, maxKey)),
          { lineStyle: { width: 1, type: 'dashed' }, showSymbol: false }));
    });
    return series;
  }
  function overlayChart(runs, part, key, maxKey, title, yName, formatter, scale) {
    var series = overlay(runs, part, key, maxKey, scale);
    if (!series.length) return null;
    var o = base(title, runsNote(runs));
    o.xAxis = stepAxis();
    o.yAxis = valueAxis(yName, formatter);
    o.dataZoom = zoom();
    o.series = series;
    return o;
  }

  /* Stacked areas of pivot.values[name] over pivot.step (phases, memory, loader stages). */
  function stackedChart(title, subtitle, steps, names, valuesOf, yName, formatter, colorOf) {
    var o = base(title, subtitle);
    o.xAxis = stepAxis();
    o.yAxis = valueAxis(yName, formatter, { scale: false });
    o.dataZoom = zoom();
    o.series = names.map(function (n) {
      var s = line(n, pairs(steps, valuesOf(n)), { stack: 'total', areaStyle: { opacity: 0.85 }, showSymbol: false,
        lineStyle: { width: 0.5 } });
      if (colorOf && colorOf(n)) s.itemStyle = { color: colorOf(n) };
      return s;
    });
    return o;
  }

  function barChart(title, subtitle, categories, catName, seriesList, xName, formatter, horizontal) {
    var o = base(title, subtitle);
    o.tooltip = { trigger: 'axis', axisPointer: { type: 'shadow' }, confine: true };
    var cat = { type: 'category', data: categories, name: catName, nameLocation: horizontal ? 'end' : 'middle',
      nameGap: horizontal ? 8 : 26, axisLabel: { interval: 0, hideOverlap: !horizontal } };
    var val = valueAxis(xName, formatter, { scale: false, nameGap: horizontal ? 26 : 52 });
    if (horizontal) {
      cat.inverse = true;
      o.grid.left = 130;
      o.xAxis = val;
      o.yAxis = cat;
    } else {
      o.xAxis = cat;
      o.yAxis = val;
    }
    o.series = seriesList;
    return o;
  }

  /* ---- chart containers ---- */
  function section(id) { return document.getElementById(id); }
  function chartBox(sectionId, id, opts) {
    seen[id] = true;
    var c = charts[id];
    if (!c) {
      var card = el('div', { class: 'chart-card' + (opts && opts.wide ? ' wide' : ''), id: id + '-card' });
      var div = el('div', { class: 'chart', id: id, 'data-chart': id });
      card.appendChild(div);
      section(sectionId).querySelector('.charts').appendChild(card);
      c = charts[id] = { card: card, el: div, chart: echarts.init(div, null, { renderer: 'canvas' }) };
    }
    return c;
  }
  function show(sectionId, id, option, opts) {
    if (!option) return;
    var c = chartBox(sectionId, id, opts);
    /* series replaced (a run or a name may be gone), other components merged: zoom survives */
    c.chart.setOption(option, { replaceMerge: ['series', 'xAxis', 'yAxis', 'legend'] });
  }
  /* A card holding HTML tables (GPU and sweep details); rebuilt on each render. */
  function tableCard(sectionId, id, title, build) {
    seen[id] = true;
    var c = charts[id];
    if (!c) {
      var card = el('div', { class: 'chart-card wide', id: id + '-card' });
      section(sectionId).querySelector('.charts').appendChild(card);
      c = charts[id] = { card: card, el: null, chart: null };
    }
    c.card.textContent = '';
    c.card.appendChild(el('h3', {}, title));
    build(c.card);
  }
  function table(headers, rows, rowClass) {
    var wrap = el('div', { class: 'table-wrap' }), t = el('table'), tr = el('tr');
    headers.forEach(function (h) { tr.appendChild(el('th', {}, h)); });
    t.appendChild(tr);
    rows.forEach(function (r, i) {
      var row = el('tr', rowClass ? { class: rowClass(i) || '' } : {});
      r.forEach(function (v) {
        var isNum = typeof v === 'number';
        row.appendChild(el('td', isNum ? { class: 'num' } : {}, isNum ? String(+v.toPrecision(6)) : v));
      });
      t.appendChild(row);
    });
    wrap.appendChild(t);
    return wrap;
  }

  /* ---- sections ---- */
  function renderSummary(doc, runs) {
    var src = document.getElementById('report-source');
    src.textContent = (doc.database ? doc.database + ' · ' : '') + 'generated ' + dateOf(doc.generated_ns) +
      ' · ' + runs.length + (runs.length === 1 ? ' run' : ' runs');
    var rows = [
      ['run', function (s) { return s.run_id; }],
      ['status', function (s) { return s.status + (s.exit_code !== null && s.exit_code !== undefined ? ' (exit ' + s.exit_code + ')' : ''); }],
      ['started', function (s) { return dateOf(s.start_ns); }],
      ['duration', function (s) { return s.end_ns ? nsToS(s.end_ns - s.start_ns) : 'running / did not close'; }],
      ['device', function (s) { return (s.device || '–') + (s.gpu ? ' · ' + s.gpu : ''); }],
      ['steps', function (s) { return s.steps + (s.steps ? ' (' + s.first_step + '–' + s.last_step + ')' : ''); }],
      ['images', function (s) { return s.images; }],
      ['images/s (after warm-up)', function (s) { return fixed(s.images_per_s, 2) + (s.warmup_steps ? '  (first ' + s.warmup_steps + ' steps left out)' : ''); }],
      ['step time p50 / p90 / p99', function (s) { return ms(s.step_ms_p50) + ' / ' + ms(s.step_ms_p90) + ' / ' + ms(s.step_ms_p99); }],
      ['MFU', function (s) { return pct(s.mfu, 2); }],
      ['loader wait share', function (s) { return pct(s.data_wait_fraction, 2); }],
      ['fp16 skipped updates / loss scale now', function (s) { return num(s.last_loss_scale) === null ? '– (no loss scaling)' : s.skipped_updates + ' / ' + s.last_loss_scale; }],
      ['peak memory (tracked categories)', function (s) { return mib(s.peak_tracked_bytes) + (num(s.peak_total_bytes) !== null ? ' (total ' + mib(s.peak_total_bytes) + ')' : ''); }],
      ['peak process RSS', function (s) { return mib(s.peak_rss_bytes); }],
      ['AP last / best', function (s) { return fixed(s.last_ap, 4) + ' / ' + fixed(s.best_ap, 4); }],
      ['git revision', function (s) { return s.git_revision; }],
      ['host', function (s) { return (s.hostname || '–') + ' · ' + (s.cpu_model || '–') + ' · ' + (s.cpu_cores || '?') + ' cores'; }],
      ['peak FLOP/s (MFU base)', function (s) { return num(s.peak_flops) === null ? '–' : (s.peak_flops / 1e12).toFixed(3) + ' TFLOP/s'; }],
      ['profile level', function (s) { return s.level; }],
      ['profiler records (written / dropped / failed)', function (s) { return s.records_written + ' / ' + s.dropped_records + ' / ' + s.write_failed_records + (s.writer_error ? ' · ' + s.writer_error : ''); }],
      ['command line', function (s) { return { pre: s.command_line }; }],
      ['configuration', function (s) { return { pre: s.config && typeof s.config === 'object' ? JSON.stringify(s.config, null, 1) : s.config }; }],
      ['versions', function (s) { return { pre: s.library_versions }; }]
    ];
    var t = el('table'), head = el('tr');
    head.appendChild(el('th', {}, ''));
    runs.forEach(function (r) { head.appendChild(el('th', {}, runLabel(r))); });
    t.appendChild(head);
    rows.forEach(function (row) {
      var tr = el('tr');
      tr.appendChild(el('th', {}, row[0]));
      runs.forEach(function (r) {
        var v, s = r.summary || {};
        try { v = row[1](s); } catch (e) { v = '–'; }
        var td = el('td');
        if (v && typeof v === 'object') td.appendChild(el('pre', {}, v.pre === undefined || v.pre === null ? '–' : v.pre));
        else td.textContent = v === undefined || v === null ? '–' : String(v);
        tr.appendChild(td);
      });
      t.appendChild(tr);
    });
    var box = document.getElementById('summary-table');
    box.textContent = '';
    box.appendChild(t);
  }

  function renderThroughput(runs) {
    show('sec-throughput', 'chart-throughput', overlayChart(runs, 'steps', 'images_per_s', null,
      'Throughput', 'images/s'));
    show('sec-throughput', 'chart-step-time', overlayChart(runs, 'steps', 'wall_ms', 'wall_ms_max',
      'Step time', 'step time (ms)'));
    show('sec-throughput', 'chart-mfu', overlayChart(runs, 'steps', 'mfu', null,
      'Model FLOPs utilisation', 'MFU (%)', null, 100));
    /* GPU runs with NVML: share of time a kernel ran (solid) and memory was busy (dashed) */
    var util = overlayChart(runs, 'steps', 'gpu_util', null, 'GPU utilisation (NVML)', 'busy (% of time)');
    if (util) {
      runs.forEach(function (run) {
        if (run.steps && hasValues(arr(run.steps, 'gpu_mem_util')))
          util.series.push(line(runLabel(run) + ' memory', pairs(run.steps.step, run.steps.gpu_mem_util),
            { lineStyle: { width: 1.2, type: 'dashed' } }));
      });
      util.yAxis.scale = false;
      util.yAxis.max = 100;
    }
    show('sec-throughput', 'chart-gpu-util', util);
  }

  function renderPhases(runs) {
    runs.forEach(function (run) {
      var p = run.phases;
      if (!p || !arr(p, 'step').length) return;
      show('sec-phases', 'chart-phases-' + run.run_id, stackedChart(
        'Step time by phase (' + runLabel(run) + ')', bucketNote(run) || 'stacked: their sum is the step time',
        p.step, arr(p, 'names'), function (n) { return p.values[n]; }, 'time per step (ms)', null,
        function (n) { return PHASE_COLORS[n]; }), { wide: runs.length === 1 });
    });
    var names = [];
    runs.forEach(function (run) {
      arr(run.phases, 'names').forEach(function (n) { if (names.indexOf(n) < 0) names.push(n); });
    });
    if (!names.length) return;
    var series = runs.filter(function (r) { return r.phases && r.phases.mean; }).map(function (run) {
      return { type: 'bar', name: runLabel(run), data: names.map(function (n) { var v = run.phases.mean[n]; return num(v); }) };
    });
    show('sec-phases', 'chart-phase-mean', barChart('Mean time per step by phase', 'whole run', names, 'phase', series,
      'ms per step', null, true));
  }

  function renderMemory(runs) {
    runs.forEach(function (run) {
      var m = run.memory;
      if (!m || !arr(m, 'step').length) return;
      var stacked = arr(m, 'names').filter(function (n) { return n !== 'process_rss' && n !== 'total'; });
      var o = stackedChart('Memory by category (' + runLabel(run) + ')',
        (bucketNote(run) ? 'each point: the maximum of ' + run.bucket_steps + ' steps; ' : '') + 'at the end of each step',
        m.step, stacked, function (n) { return m.values[n]; }, 'memory (MiB)',
        function (v) { return (v / MIB).toFixed(0); });
      ['total', 'process_rss'].forEach(function (n) {
        if (m.values[n]) o.series.push(line(n === 'process_rss' ? 'process RSS' : 'total',
          pairs(m.step, m.values[n]), { showSymbol: false, lineStyle: { width: 2, type: 'dashed' } }));
      });
      o.tooltip.valueFormatter = function (v) { return mib(v); };
      show('sec-memory', 'chart-memory-' + run.run_id, o);
    });
    var cats = [];
    runs.forEach(function (run) {
      Object.keys((run.memory && run.memory.peaks) || {}).forEach(function (n) { if (cats.indexOf(n) < 0) cats.push(n); });
    });
    if (!cats.length) return;
    var series = runs.map(function (run) {
      var peaks = (run.memory && run.memory.peaks) || {};
      return { type: 'bar', name: runLabel(run), data: cats.map(function (n) { return num(peaks[n]); }) };
    });
    var o = barChart('Peak memory by category', 'highest value over the run', cats, 'category', series, 'peak (MiB)',
      function (v) { return (v / MIB).toFixed(0); }, true);
    o.tooltip.valueFormatter = function (v) { return mib(v); };
    show('sec-memory', 'chart-memory-peaks', o);
  }

  function renderLoader(runs) {
    show('sec-loader', 'chart-loader-wait', overlayChart(runs, 'loader', 'wait_ms', 'wait_ms_max',
      'Time the training loop waited for data', 'wait per step (ms)'));
    show('sec-loader', 'chart-queue-depth', overlayChart(runs, 'loader', 'queue_depth', null,
      'Loader queue depth when a batch was asked for', 'ready batches (0 = the loop waited)'));
    var stages = [['read_ms', 'read'], ['decode_ms', 'decode'], ['augment_ms', 'augment'], ['collate_ms', 'collate']];
    runs.forEach(function (run) {
      var l = run.loader;
      if (!l || !arr(l, 'step').length) return;
      show('sec-loader', 'chart-loader-stages-' + run.run_id, stackedChart(
        'Loader work per batch by stage (' + runLabel(run) + ')',
        'worker time summed over the batch\'s samples' + (bucketNote(run) ? '; ' + bucketNote(run) : ''),
        l.step, stages.map(function (s) { return s[1]; }),
        function (n) { for (var i = 0; i < stages.length; i++) if (stages[i][1] === n) return l[stages[i][0]]; return []; },
        'worker time per batch (ms)'));
    });
  }

  function renderTraining(runs) {
    show('sec-training', 'chart-loss-total', overlayChart(runs, 'steps', 'loss', null,
      'Total weighted loss', 'loss'));
    runs.forEach(function (run) {
      var l = run.losses;
      if (!l || !arr(l, 'step').length) return;
      var o = base('Loss terms (' + runLabel(run) + ')',
        'auxiliary (per decoder layer) and error terms hidden at first: click the legend' +
        (bucketNote(run) ? '; ' + bucketNote(run) : ''));
      o.xAxis = stepAxis();
      o.yAxis = valueAxis('loss term value');
      o.dataZoom = zoom();
      var selected = {};
      o.series = arr(l, 'names').map(function (n) {
        selected[n] = !!MAIN_LOSSES[n];
        return line(n, pairs(l.step, l.values[n]));
      });
      o.legend.selected = selected;
      show('sec-training', 'chart-losses-' + run.run_id, o);
    });
    var lr = overlayChart(runs, 'steps', 'lr', null, 'Learning rate', 'learning rate',
      function (v) { return v.toExponential(1); });
    if (lr) {
      runs.forEach(function (run) {
        if (run.steps && hasValues(arr(run.steps, 'lr_backbone')))
          lr.series.push(line(runLabel(run) + ' backbone', pairs(run.steps.step, run.steps.lr_backbone),
            { lineStyle: { width: 1.2, type: 'dashed' } }));
      });
      lr.yAxis.scale = false;
    }
    show('sec-training', 'chart-lr', lr);
    show('sec-training', 'chart-grad-norm', overlayChart(runs, 'steps', 'grad_norm', 'grad_norm_max',
      'Gradient norm (before clipping)', 'total gradient L2 norm'));
    /* fp16 runs: the loss scale halves at each skipped update (inf/NaN gradients), doubles after
     * 2000 clean steps; bucketed points show the bucket's smallest scale */
    var scale = overlayChart(runs, 'steps', 'loss_scale', null, 'fp16 loss scale',
      'loss scale (log)', function (v) { return v >= 1024 ? v.toExponential(0) : String(v); });
    if (scale) scale.yAxis.type = 'log';
    show('sec-training', 'chart-loss-scale', scale);
    var evalSeries = [];
    runs.forEach(function (run) {
      var e = run.eval;
      if (!e || !arr(e, 'step').length) return;
      [['ap', 'AP'], ['ap50', 'AP50'], ['ap75', 'AP75'], ['ar100', 'AR100']].forEach(function (k) {
        var ys = arr(e, k[0]).map(function (v) { return num(v) !== null && v >= 0 ? v : null; });
        evalSeries.push(line(k[1] + ' (' + runLabel(run) + ')', pairs(e.step, ys), { showSymbol: true, symbolSize: 7 }));
      });
    });
    if (evalSeries.length) {
      var o = base('Evaluation (COCO) over training', 'AP@[.5:.95], AP50, AP75, AR@100 on the validation set');
      o.xAxis = stepAxis();
      o.yAxis = valueAxis('AP / AR (fraction)', null, { scale: false, min: 0, max: function (v) { return Math.max(0.1, Math.ceil(v.max * 10) / 10); } });
      o.series = evalSeries;
      show('sec-training', 'chart-eval', o);
    }
  }

  function renderGpu(runs) {
    var any = false;
    runs.forEach(function (run) {
      var g = run.gpu;
      if (!g || typeof g !== 'object') return;
      any = true;
      var kernels = arr(g, 'kernels');
      if (kernels.length) {
        var o = barChart('Top kernels by GPU time (' + runLabel(run) + ')', 'CUPTI_ACTIVITY_KIND_KERNEL, grouped by demangled name',
          kernels.map(function (k) { var n = k.short_name || k.name || '?'; return n.length > 40 ? n.slice(0, 39) + '…' : n; }), 'kernel',
          [{ type: 'bar', name: 'total time (ms)', data: kernels.map(function (k) { return k.total_ns / 1e6; }) }],
          'total time (ms)', null, true);
        o.grid.left = 260;
        show('sec-gpu', 'chart-gpu-kernels-' + run.run_id, o);
      }
      tableCard('sec-gpu', 'table-gpu-' + run.run_id, 'GPU activity (' + runLabel(run) + ')', function (card) {
        var b = g.busy, kt = g.kernel_totals || {};
        var facts = [
          ['kernels', kt.count === undefined ? '–' : kt.count + ' launches, ' + (kt.distinct_names || 0) + ' distinct, ' + ms((kt.total_ns || 0) / 1e6)],
          ['GPU busy (≥ 1 kernel running) over the steps\' span', b ? ms(b.busy_ns / 1e6) + ' of ' + ms(b.window_ns / 1e6) + ' = ' + pct(b.busy_fraction) : '–']
        ];
        card.appendChild(table(['', ''], facts));
        if (kernels.length) {
          card.appendChild(el('h3', {}, 'Top kernels'));
          card.appendChild(table(['kernel', 'count', 'total (ms)', 'mean (µs)', 'min (µs)', 'max (µs)', 'share'],
            kernels.map(function (k) { return [k.name, k.count, k.total_ns / 1e6, k.avg_ns / 1e3, k.min_ns / 1e3, k.max_ns / 1e3, pct(k.fraction)]; })));
        }
        if (arr(g, 'memcpy').length) {
          card.appendChild(el('h3', {}, 'Memory copies (CUPTI_ACTIVITY_KIND_MEMCPY)'));
          card.appendChild(table(['kind', 'count', 'MiB', 'total (ms)', 'GB/s'],
            g.memcpy.map(function (m) { return [m.kind, m.count, m.bytes / MIB, m.total_ns / 1e6, num(m.bytes_per_s) === null ? '–' : m.bytes_per_s / 1e9]; })));
        }
        if (g.memset && g.memset.count) {
          card.appendChild(el('h3', {}, 'Memory sets (CUPTI_ACTIVITY_KIND_MEMSET)'));
          card.appendChild(table(['count', 'MiB', 'total (ms)'], [[g.memset.count, g.memset.bytes / MIB, g.memset.total_ns / 1e6]]));
        }
      });
    });
    section('sec-gpu').hidden = !any;
  }

  function trialLabel(t) { return t.amp + ', accum ' + t.accum + ', ' + t.workers + ' workers'; }

  function renderSweeps(sweeps) {
    section('sec-sweeps').hidden = !sweeps.length;
    sweeps.forEach(function (sw) {
      var trials = arr(sw, 'trials');
      var groups = {};
      trials.forEach(function (t) { (groups[trialLabel(t)] = groups[trialLabel(t)] || []).push(t); });
      var rec = trials.filter(function (t) { return t.recommended; });
      var bad = trials.filter(function (t) { return t.status !== 'ok'; });
      var title = 'sweep ' + sw.sweep_id + ' (' + sw.status + ')';
      function sweepChart(key, name, yName, formatter, badY) {
        var series = Object.keys(groups).map(function (g) {
          var ok = groups[g].filter(function (t) { return t.status === 'ok' && num(t[key]) !== null; })
            .sort(function (a, b) { return a.batch - b.batch; });
          return line(g, ok.map(function (t) { return [t.batch, t[key]]; }), { showSymbol: true, symbolSize: 8 });
        });
        if (bad.length)
          series.push({ type: 'scatter', name: 'OOM / failed', symbol: 'triangle', symbolSize: 14, itemStyle: { color: '#d62728' },
            data: bad.map(function (t) { return { value: [t.batch, badY(t)], status: t.status }; }),
            label: { show: true, position: 'top', formatter: function (p) { return p.data.status; } } });
        if (rec.length)
          series.push({ type: 'scatter', name: 'recommended', symbol: 'diamond', symbolSize: 22, z: 10,
            itemStyle: { color: '#f5b800', borderColor: '#000', borderWidth: 1 },
            data: rec.filter(function (t) { return num(t[key]) !== null; }).map(function (t) { return [t.batch, t[key]]; }),
            label: { show: true, position: 'right', formatter: 'recommended' } });
        var o = base(name + ' against batch size (' + title + ')', 'one line per precision / accumulation / workers');
        o.tooltip = { trigger: 'item', confine: true };
        o.xAxis = { type: 'log', logBase: 2, name: 'batch size (images per step)', nameLocation: 'middle', nameGap: 26, min: 'dataMin', max: 'dataMax' };
        o.yAxis = valueAxis(yName, formatter, { scale: false });
        if (key === 'peak_bytes' && num(sw.mem_limit_bytes) !== null)
          series.push({ type: 'line', name: 'memory limit', data: [], markLine: { symbol: 'none', lineStyle: { color: '#d62728', type: 'dashed' },
            label: { formatter: 'limit' }, data: [{ yAxis: sw.mem_limit_bytes }] } });
        o.series = series;
        return o;
      }
      show('sec-sweeps', 'chart-sweep-' + sw.sweep_id + '-ips', sweepChart('images_per_s', 'Throughput', 'images/s', null,
        function () { return 0; }));
      var maxPeak = 0;
      trials.forEach(function (t) { if (num(t.peak_bytes) !== null && t.peak_bytes > maxPeak) maxPeak = t.peak_bytes; });
      var m = sweepChart('peak_bytes', 'Peak memory', 'peak memory (MiB)', function (v) { return (v / MIB).toFixed(0); },
        function (t) { return num(t.peak_bytes) !== null ? t.peak_bytes : (num(sw.mem_limit_bytes) !== null ? sw.mem_limit_bytes : maxPeak); });
      show('sec-sweeps', 'chart-sweep-' + sw.sweep_id + '-mem', m);
      tableCard('sec-sweeps', 'table-sweep-' + sw.sweep_id, 'Trials of ' + title, function (card) {
        var r = sw.recommendation;
        if (r && typeof r === 'object') {
          var f = r.fastest, tg = r.target;
          if (f) card.appendChild(el('p', {}, 'Fastest: batch ' + f.batch + ', ' + f.amp + ', accum ' + f.accum + ', ' + f.workers +
            ' workers: ' + fixed(f.images_per_s, 1) + ' images/s (trial ' + f.trial_id + ')'));
          if (tg) card.appendChild(el('p', {}, 'For the target batch: batch ' + tg.batch + ', accum ' + tg.accum + ', ' + tg.amp +
            ': ' + fixed(tg.images_per_s, 1) + ' images/s (trial ' + tg.trial_id + ')'));
          arr(r, 'warnings').forEach(function (w) { card.appendChild(el('p', { class: 'warn' }, 'warning: ' + w)); });
          arr(r, 'notes').forEach(function (w) { card.appendChild(el('p', { class: 'muted' }, w)); });
        }
        card.appendChild(table(['trial', 'batch', 'amp', 'accum', 'workers', 'phase', 'status', 'images/s', 'step p50 (ms)',
          'step p99 (ms)', 'peak (MiB)', 'loader wait', 'MFU', 'run', 'message'],
          trials.map(function (t) {
            return [t.trial_id, t.batch, t.amp, t.accum, t.workers, t.phase || '', t.status + (t.recommended ? ' ★ recommended' : ''),
              num(t.images_per_s) === null ? '–' : t.images_per_s, num(t.step_p50_ns) === null ? '–' : t.step_p50_ns / 1e6,
              num(t.step_p99_ns) === null ? '–' : t.step_p99_ns / 1e6, num(t.peak_bytes) === null ? '–' : t.peak_bytes / MIB,
              pct(t.loader_wait_fraction), pct(t.mfu, 2), t.run_id === null || t.run_id === undefined ? '–' : String(t.run_id),
              t.message || (t.reused_from ? 'reused trial ' + t.reused_from : '')];
          }),
          function (i) { return trials[i].recommended ? 'best' : (trials[i].status !== 'ok' ? 'bad' : ''); }));
      });
    });
  }

  function renderNav() {
    var nav = document.getElementById('report-nav');
    nav.textContent = '';
    document.querySelectorAll('main > section').forEach(function (s) {
      if (s.hidden) return;
      var a = el('a', { href: '#' + s.id }, s.querySelector('h2').textContent);
      nav.appendChild(a);
    });
  }

  function render(doc) {
    seen = {};
    var runs = (doc && Array.isArray(doc.runs)) ? doc.runs : [];
    var empty = document.getElementById('report-empty');
    empty.hidden = runs.length > 0;
    empty.textContent = runs.length ? '' : 'No run in this database yet.';
    renderSummary(doc || {}, runs);
    var parts = [renderThroughput, renderPhases, renderMemory, renderLoader, renderTraining, renderGpu];
    parts.forEach(function (f) {
      try { f(runs); } catch (e) { console.error('detr-report: ' + f.name + ': ' + e.message); }
    });
    try { renderSweeps((doc && Array.isArray(doc.sweeps)) ? doc.sweeps : []); } catch (e) { console.error('detr-report: sweeps: ' + e.message); }
    Object.keys(charts).forEach(function (id) {
      if (seen[id]) return;
      if (charts[id].chart) charts[id].chart.dispose();
      charts[id].card.remove();
      delete charts[id];
    });
    ['sec-throughput', 'sec-phases', 'sec-memory', 'sec-loader', 'sec-training'].forEach(function (id) {
      section(id).hidden = !section(id).querySelector('.chart-card');
    });
    renderNav();
    return Object.keys(charts).length;
  }

  var resizeTimer = null;
  window.addEventListener('resize', function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      Object.keys(charts).forEach(function (id) { if (charts[id].chart) charts[id].chart.resize(); });
    }, 100);
  });

  window.detrReport = {
    render: render,
    /* chart id -> ECharts instance (tests and the dashboard) */
    charts: function () {
      var out = {};
      Object.keys(charts).forEach(function (id) { if (charts[id].chart) out[id] = charts[id].chart; });
      return out;
    }
  };

  var dataEl = document.getElementById('detr-report-data');
  var initial = null;
  try { initial = JSON.parse(dataEl.textContent); } catch (e) { console.error('detr-report: the embedded data is not valid JSON: ' + e.message); }
  if (initial) render(initial);
})();

// The console's page script: charts from the data the page carries, the import's
// progress bar, and a workbench task put back when the page is left.
(function () {
  function charts(root) {
    if (!window.echarts) return;
    root.querySelectorAll('[data-option]').forEach(function (el) {
      var chart = echarts.getInstanceByDom(el) || echarts.init(el);
      chart.setOption(JSON.parse(el.getAttribute('data-option')));
      el.setAttribute('data-drawn', 'yes');
    });
  }
  document.addEventListener('DOMContentLoaded', function () { charts(document); });
  document.addEventListener('htmx:afterSwap', function (e) { charts(e.target); });
  window.addEventListener('resize', function () {
    document.querySelectorAll('[data-drawn]').forEach(function (el) {
      var chart = window.echarts && echarts.getInstanceByDom(el);
      if (chart) chart.resize();
    });
  });
  document.addEventListener('htmx:xhr:progress', function (e) {
    var bar = document.getElementById('import-progress');
    if (bar && e.detail.lengthComputable) bar.value = e.detail.loaded / e.detail.total * 100;
  });
  // A refusal or failure answers with the reason: show it where notices go.
  document.addEventListener('htmx:beforeSwap', function (e) {
    if (e.detail.xhr.status >= 400) { e.detail.shouldSwap = true; e.detail.isError = false; }
  });
  window.addEventListener('pagehide', function () {
    var card = document.getElementById('task-card');
    if (!card || !navigator.sendBeacon) return;
    var form = new FormData();
    form.append('csrf', document.body.getAttribute('data-csrf'));
    form.append('task_id', card.getAttribute('data-task'));
    form.append('lease_token', card.getAttribute('data-lease'));
    navigator.sendBeacon('/console/workbench/release', new URLSearchParams(form));
  });
})();

// attio-webhooks console: live updates for the events table. The pages work without this file
// (every control is a plain link or form); with it, the table follows /api/v1/stream.
(function () {
  "use strict";
  var table = document.querySelector("table[data-live]");
  if (!table || !window.EventSource) {
    return;
  }
  var body = table.querySelector("tbody");
  var wanted = table.getAttribute("data-status") || "";
  var live = document.getElementById("live");
  var source = new EventSource("/api/v1/stream");
  source.onopen = function () {
    if (live) { live.textContent = "Live: new events appear here as they arrive."; }
  };
  source.onerror = function () {
    if (live) { live.textContent = "Live updates paused; reconnecting…"; }
  };
  function statusCell(cell, status) {
    cell.textContent = status;
    cell.className = "status status-" + status;
  }
  source.addEventListener("status", function (message) {
    var change;
    try { change = JSON.parse(message.data); } catch (e) { return; }
    var row = body.querySelector('tr[data-id="' + CSS.escape(change.id) + '"]');
    if (row) {
      statusCell(row.querySelector("td.status"), change.status);
      return;
    }
    if (wanted && wanted !== change.status) { return; }
    if (table.getAttribute("data-first-page") !== "true") { return; }
    row = document.createElement("tr");
    row.setAttribute("data-id", change.id);
    var idCell = document.createElement("td");
    var link = document.createElement("a");
    link.href = "/console/events/" + encodeURIComponent(change.id);
    link.textContent = change.id;
    idCell.appendChild(link);
    var typeCell = document.createElement("td");
    typeCell.textContent = change.event_type;
    var status = document.createElement("td");
    statusCell(status, change.status);
    var objectCell = document.createElement("td");
    objectCell.textContent = "";
    var age = document.createElement("td");
    age.textContent = "just now";
    [idCell, typeCell, status, objectCell, age].forEach(function (cell) { row.appendChild(cell); });
    body.insertBefore(row, body.firstChild);
    var empty = document.getElementById("empty");
    if (empty) { empty.remove(); }
  });
})();

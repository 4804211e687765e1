// Live progress of garden operations (hosts/garden.py) on the admin's pages: every element with data-operation-id
// and data-field follows the operation_* events of the ATC websocket (docs/atc-protocol.md). Plain script: the
// admin's pages load no modules.
"use strict";
(function () {
  const FINISHED = new Set(["succeeded", "failed"]);
  let lastSeq = 0;

  function show(op) {
    for (const node of document.querySelectorAll(`[data-operation-id="${op.id}"]`)) {
      const field = node.dataset.field;
      if (field === "bar") {
        if (op.percent !== null && op.percent !== undefined) node.value = op.percent;
        else if (op.status === "succeeded") node.value = 100;
        else if (op.status === "failed") node.value = 0;
        else node.removeAttribute("value"); // indeterminate: loading, no byte counts yet
      } else if (field === "percent") {
        node.textContent = op.percent === null || op.percent === undefined ? "" : `${Math.round(op.percent)}%`;
      } else if (field === "status") {
        node.textContent = op.status;
        node.dataset.status = op.status;
      } else if (field === "message") {
        node.textContent = op.error || op.message || "";
      } else if (field === "page" && FINISHED.has(op.status) && node.dataset.reloadOnFinish) {
        delete node.dataset.reloadOnFinish; // the page shows the outcome (results, figures) when rendered again
        setTimeout(() => location.reload(), 200);
      }
    }
  }

  function handle(message) {
    let events = [];
    if (message.type === "snapshot") events = (message.data && message.data.events) || [];
    else if (message.type === "batch" || message.type === "resume") events = message.events || [];
    if (typeof message.seq === "number") lastSeq = Math.max(lastSeq, message.seq);
    for (const event of events) {
      if (typeof event.seq === "number") lastSeq = Math.max(lastSeq, event.seq);
      if (event.type && event.type.startsWith("operation_") && event.data) show(event.data);
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const since = lastSeq > 0 ? `?since=${lastSeq}` : "";
    const socket = new WebSocket(`${scheme}//${location.host}/ws/atc/${since}`);
    document.documentElement.dataset.operationsSocket = "connecting";
    socket.addEventListener("open", () => (document.documentElement.dataset.operationsSocket = "live"));
    socket.addEventListener("message", (message) => {
      try {
        handle(JSON.parse(message.data));
      } catch (error) {
        console.warn("garden operations: could not read a message", error);
      }
    });
    socket.addEventListener("close", (closed) => {
      document.documentElement.dataset.operationsSocket = "closed";
      if (closed.code !== 4401) setTimeout(connect, 2000); // 4401: logged out, nothing to follow
    });
  }

  function start() {
    if (document.querySelector("[data-operation-id]")) connect();
  }

  // The admin puts its scripts in <head>: wait for the page's rows.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

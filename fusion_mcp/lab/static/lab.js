// fusion-mcp lab: the live columns of a running fusion (SSE), and the one-time sign-in link's form.
// Model text is only ever set as text (textContent / text nodes), never parsed as HTML.
"use strict";

(function () {
  const auto = document.querySelector("form[data-autosubmit]");
  if (auto) {
    auto.requestSubmit();
    return;
  }

  const board = document.querySelector("[data-run-events]");
  if (!board) {
    return;
  }
  const status = document.getElementById("run-status");
  const columns = new Map();
  for (const column of board.querySelectorAll("[data-member]")) {
    columns.set(column.dataset.member, column);
  }
  const analyst = board.querySelector("[data-analyst]");
  // The analyst may be a panel model too: once it has started, its tool calls are its own column's.
  let analystStarted = false;

  function setState(column, text, kind) {
    if (!column) {
      return;
    }
    const state = column.querySelector("[data-state]");
    state.textContent = text;
    column.dataset.kind = kind;
  }

  function addStep(column, text, kind) {
    if (!column) {
      return;
    }
    const item = document.createElement("li");
    item.textContent = text;
    item.className = "step-" + kind;
    column.querySelector("[data-steps]").append(item);
  }

  const ON_STEP = {
    started: (s) => {
      for (const column of columns.values()) {
        setState(column, "answering", "running");
      }
      status.textContent = "The panel is answering…";
    },
    queued: (s) => { status.textContent = s.message; },
    tool: (s) => addStep(
      analystStarted && s.model === analyst.dataset.model ? analyst : columns.get(s.model),
      s.tool + " " + s.used + "/" + s.budget + (s.target ? ": " + s.target : ""),
      "tool",
    ),
    retry: (s) => addStep(columns.get(s.model), s.message, "retry"),
    member_answered: (s) => setState(columns.get(s.model), "answered in " + s.elapsed + " s", "answered"),
    member_failed: (s) => {
      setState(columns.get(s.model), "failed", "failed");
      addStep(columns.get(s.model), s.error || s.message, "failed");
    },
    member_cut: (s) => setState(columns.get(s.model), "cut off at the deadline", "cut"),
    analyst_started: (s) => {
      analystStarted = true;
      setState(analyst, "comparing the answers…", "running");
      status.textContent = "The analyst is comparing the answers…";
    },
    analyst_done: (s) => setState(analyst, s.error ? "failed: " + s.error : "done", s.error ? "failed" : "answered"),
    analysis_skipped: (s) => setState(analyst, s.message, "failed"),
  };

  // Every connection's stream starts from the run's beginning (a reconnect too): what is drawn goes first, the
  // text the server drew for pages without script included.
  function reset() {
    for (const column of [...columns.values(), analyst]) {
      const text = column.querySelector("[data-text]");
      if (text) {
        text.textContent = "";
      }
      column.querySelector("[data-steps]").textContent = "";
    }
  }

  const source = new EventSource(board.dataset.runEvents);
  source.addEventListener("open", reset);
  source.addEventListener("news", (event) => {
    const news = JSON.parse(event.data);
    for (const [model, text] of Object.entries(news.text)) {
      const column = columns.get(model);
      if (column) {
        column.querySelector("[data-text]").append(document.createTextNode(text));
        if (column.dataset.kind !== "answered") {
          setState(column, "answering", "running");
        }
      }
    }
    for (const step of news.steps) {
      const handle = ON_STEP[step.kind];
      if (handle) {
        handle(step);
      }
    }
    if (news.done) {
      source.close();
      status.textContent = "Done: loading the analysis…";
      window.location.reload();
    }
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      status.textContent = "The live view lost its connection: reload the page.";
    }
  });
})();

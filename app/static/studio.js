// Keyboard helpers for the prompt boxes (loaded into the page's <head>).
//   Ctrl+Enter (Cmd+Enter)     : press the Generate button of the tab the prompt is in.
//   Ctrl+Up / Ctrl+Down        : raise / lower the attention weight of the selected words, as in
//                                A1111: "word" -> "(word:1.1)" -> "(word:1.2)"; back at 1 the
//                                brackets go. With nothing selected, the weighted group around
//                                the cursor, or else the word under it, is taken.
(() => {
  if (window.studioKeysInstalled) return;
  window.studioKeysInstalled = true;

  const STEP = 0.1;
  const DELIMITERS = " \t\n\r,.;:!?/\\()[]{}<>|=`~^*%\"";
  const WEIGHTED = /^\(([^()]*?):\s*(-?\d+(?:\.\d+)?)\s*\)/;

  function promptTab(area) {
    const box = area.closest('[id$="_prompt"]');
    if (!box) return null;
    return box.id.replace(/_neg_prompt$/, "").replace(/_prompt$/, "");
  }

  function formatWeight(weight) {
    return String(parseFloat(weight.toFixed(2)));
  }

  // The "(text:w)" group the cursor is in: [start of text, end of text] or null.
  function enclosingGroup(text, pos) {
    let open = text.lastIndexOf("(", pos - 1);
    while (open >= 0) {
      const match = WEIGHTED.exec(text.slice(open));
      if (match && pos <= open + match[0].length) return [open + 1, open + 1 + match[1].length];
      open = text.lastIndexOf("(", open - 1);
    }
    return null;
  }

  function wordAt(text, pos) {
    let start = pos, end = pos;
    while (start > 0 && !DELIMITERS.includes(text[start - 1])) start--;
    while (end < text.length && !DELIMITERS.includes(text[end])) end++;
    return start < end ? [start, end] : null;
  }

  function editWeight(area, delta) {
    let text = area.value;
    let start = area.selectionStart, end = area.selectionEnd;
    if (start === end) {
      const range = enclosingGroup(text, start) || wordAt(text, start);
      if (!range) return false;
      [start, end] = range;
    }
    while (start < end && /\s/.test(text[start])) start++;
    while (end > start && /\s/.test(text[end - 1])) end--;
    if (start === end) return false;
    let selected = text.slice(start, end);

    const whole = /^\(([^()]*?):\s*(-?\d+(?:\.\d+)?)\s*\)$/.exec(selected);
    if (whole) {  // the selection is a whole group: work on its inside
      start += 1;
      selected = whole[1];
      end = start + selected.length;
    }
    const after = text.slice(end);
    const weightAfter = /^:\s*(-?\d+(?:\.\d+)?)\s*\)/.exec(after);
    if (start > 0 && text[start - 1] === "(" && weightAfter) {
      const weight = parseFloat(weightAfter[1]) + delta;
      if (Math.abs(weight - 1) < 1e-6) {
        text = text.slice(0, start - 1) + selected + after.slice(weightAfter[0].length);
        start -= 1;
        end = start + selected.length;
      } else {
        text = text.slice(0, end) + ":" + formatWeight(weight) + ")" + after.slice(weightAfter[0].length);
      }
    } else {
      text = text.slice(0, start) + "(" + selected + ":" + formatWeight(1 + delta) + ")" + after;
      start += 1;
      end += 1;
    }
    area.value = text;
    area.setSelectionRange(start, end);
    // Gradio's textbox keeps its value in sync through "input" events.
    area.dispatchEvent(new Event("input", { bubbles: true }));
    return true;
  }
  window.studioEditWeight = editWeight;

  document.addEventListener("keydown", (event) => {
    const area = event.composedPath ? event.composedPath()[0] : event.target;
    if (!area || area.tagName !== "TEXTAREA") return;
    const tab = promptTab(area);
    if (!tab) return;
    const modifier = event.ctrlKey || event.metaKey;
    if (!modifier) return;
    if (event.key === "Enter") {
      const button = document.getElementById(tab + "_generate");
      if (!button) return;
      event.preventDefault();
      area.dispatchEvent(new Event("input", { bubbles: true }));
      setTimeout(() => button.click(), 50);
    } else if (event.key === "ArrowUp" || event.key === "ArrowDown") {
      if (editWeight(area, event.key === "ArrowUp" ? STEP : -STEP)) event.preventDefault();
    }
  }, true);
})();

// Clamped numbers said aloud: a slider's number box quietly turns a value outside the slider's
// range into the nearest end (width 10000 -> 2048, steps 0 -> 1). What was typed is noted as it
// is typed, before Gradio clamps it; when the box is left (Enter, or focus moves on) a note under
// the slider says what was used instead. A value in range removes the note.
(() => {
  if (window.studioClampNotesInstalled) return;
  window.studioClampNotesInstalled = true;

  const typed = new WeakMap();  // number box -> the text last typed into it

  function numberBox(event) {
    const box = event.composedPath ? event.composedPath()[0] : event.target;
    return box && box.tagName === "INPUT" && box.type === "number" ? box : null;
  }

  function sliderOf(box) {
    const block = box.closest(".block");
    const range = block && block.querySelector("input[type=range]");
    return range ? { block, range } : null;
  }

  function showNote(block, text) {
    let note = block.querySelector(":scope > .studio-clamp-note");
    if (!text) {
      if (note) note.remove();
      return;
    }
    if (!note) {
      note = document.createElement("div");
      note.className = "studio-clamp-note";
      note.setAttribute("role", "status");
      block.appendChild(note);
    }
    note.textContent = text;
  }

  function check(box) {
    if (!typed.has(box)) return;
    const text = typed.get(box);
    typed.delete(box);
    const slider = sliderOf(box);
    const value = parseFloat(text);
    if (!slider || !Number.isFinite(value)) return;
    const low = parseFloat(slider.range.min), high = parseFloat(slider.range.max);
    const label = (slider.block.querySelector("label") || {}).innerText || "This value";
    const name = label.trim().split("\n")[0];
    let note = "";
    if (Number.isFinite(high) && value > high) note = `${name}: ${text} is above the largest, ${high}: ${high} is used`;
    else if (Number.isFinite(low) && value < low) note = `${name}: ${text} is below the smallest, ${low}: ${low} is used`;
    showNote(slider.block, note);
  }

  document.addEventListener("input", (event) => {
    const box = numberBox(event);
    if (box && sliderOf(box)) typed.set(box, box.value);
  }, true);
  document.addEventListener("keydown", (event) => {
    const box = numberBox(event);
    if (box && event.key === "Enter") check(box);
  }, true);
  document.addEventListener("focusout", (event) => {
    const box = numberBox(event);
    if (box) check(box);
  }, true);
})();

// The diagnose page: one radiograph in, the model's answer and its Grad-CAM out.
// /predict gives the answer quickly; /explain?format=layers follows with the heatmap.
// The decision is the server's: the label and referral come from /predict, the threshold and
// referral band from /metadata; nothing here compares a probability with the threshold.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { percent, formatBytes } = pneumo;
  let current = 0; // the latest analysis: answers about an earlier file are dropped
  let objectUrl = null;
  let meta = null;

  async function isDicom(file) {
    // DICOM Part 10: "DICM" after a 128-byte preamble. Browsers cannot display it.
    const head = new Uint8Array(await file.slice(128, 132).arrayBuffer());
    return head.length === 4 && String.fromCharCode(...head) === "DICM";
  }

  function form(file) {
    // Sent as octet-stream: the server identifies the format from the bytes, so a file
    // with the wrong extension is still read correctly.
    const body = new FormData();
    body.append("image", new Blob([file], { type: "application/octet-stream" }), file.name);
    return body;
  }

  function setState(state) {
    $("result").dataset.state = state;
    document.body.dataset.state = state;
  }

  function hideError() {
    $("error").hidden = true;
    $("error-title").textContent = "";
    $("error-detail").textContent = "";
  }

  function showError(error, file) {
    $("result").hidden = true;
    $("status").textContent = "";
    $("error-title").textContent = file ? `${file.name}: ${error.message}` : error.message;
    $("error-detail").textContent = error.detail ? `Details: ${error.detail}.`.replace(/\.\.$/, ".") : "";
    $("error").hidden = false;
    setState("error");
  }

  function clearImages() {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = null;
    for (const id of ["original", "model-view", "heatmap"]) $(id).removeAttribute("src");
  }

  function showGauge(probability, pneumonia, threshold, band) {
    const gauge = $("gauge");
    const at = (value) => `${(100 * Math.min(1, Math.max(0, value))).toFixed(2)}%`;
    $("gauge-fill").style.width = at(probability);
    $("gauge-fill").classList.toggle("above", pneumonia);
    $("gauge-threshold").style.left = at(threshold);
    $("gauge-threshold-label").textContent = `threshold ${percent(threshold)}`;
    $("gauge-band").style.left = at(band[0]);
    $("gauge-band").style.width = at(band[1] - band[0]);
    gauge.setAttribute("aria-valuenow", (100 * probability).toFixed(1));
    gauge.setAttribute(
      "aria-valuetext",
      `${percent(probability)}; decision threshold ${percent(threshold)}; ` +
        `referral band ${percent(band[0])} to ${percent(band[1])}`,
    );
  }

  function showPrediction(prediction, file, dicom) {
    const { probability, label } = prediction;
    // The model's decision rule as /metadata states it (the answer repeats it if that failed).
    const { threshold, referral_band: band } = meta ?? prediction;
    const pneumonia = label === "PNEUMONIA";
    $("result-file").textContent = file.name;
    const labelNode = $("label");
    labelNode.textContent = pneumonia ? "Pneumonia" : "Normal";
    labelNode.dataset.label = label;
    $("verdict").className = `verdict ${pneumonia ? "positive" : "negative"}`;
    const shown = $("probability");
    shown.textContent = percent(probability);
    shown.dataset.probability = String(probability);
    showGauge(probability, pneumonia, threshold, band);

    const bandText = `${percent(band[0])} to ${percent(band[1])}`;
    $("referral").hidden = !prediction.refer_to_radiologist;
    $("no-referral").hidden = prediction.refer_to_radiologist;
    $("referral-detail").textContent = prediction.out_of_distribution
      ? `This image is ${prediction.ood_reason}: the model's answer cannot be trusted on it.`
      : `The probability lies in the referral band (${bandText}) around the decision threshold: ` +
        "a small change of the image could flip the call.";
    $("no-referral-detail").textContent =
      `Outside the referral band (${bandText}): the model's call is not borderline. ` +
      "A clinician still confirms every result.";

    const input = prediction.input;
    const side = meta ? meta.image_size : null;
    $("input-note").textContent =
      `Read as ${input.format}, ${input.width} × ${input.height} pixels` +
      (side ? `; the model sees it as a ${side} × ${side} grayscale square.` : ".");
    // The original keeps its own proportions beside the model's square view.
    $("result").style.setProperty("--aspect", String(input.width / input.height));
    if (dicom) {
      $("original-note").textContent =
        "DICOM: the server's decoding for the model, back in the file's proportions.";
    } else {
      objectUrl = URL.createObjectURL(file);
      $("original").src = objectUrl;
      $("original-note").textContent = `As uploaded (${input.width} × ${input.height} pixels).`;
    }
    $("heatmap-note").textContent = "Computing the heatmap…";
    $("result").hidden = false;
    const referral = prediction.refer_to_radiologist ? " Refer to a radiologist." : "";
    $("status").textContent =
      `${file.name}: probability of pneumonia ${percent(probability)}, ` +
      `model's call ${pneumonia ? "pneumonia" : "normal"}.${referral}`;
    setState("predicted");
  }

  function showLayers(layers, dicom) {
    $("model-view").src = layers.image;
    $("heatmap").src = layers.heatmap;
    if (dicom) $("original").src = layers.image;
    $("heatmap-note").textContent =
      "Red areas raised the pneumonia score most, blue the least. Grad-CAM shows where the " +
      "network looked, not the outline of a lesion.";
    setState("explained");
  }

  async function analyse(file) {
    const id = ++current;
    hideError();
    clearImages();
    $("result").hidden = true;
    setState("predicting");
    if (meta && file.size > meta.limits.max_request_bytes) {
      showError(
        new pneumo.ApiError(
          `The file is too large to analyse (the limit is ${formatBytes(meta.limits.max_request_bytes)}). ` +
            "Export a smaller version and retry.",
          `the file is ${file.size.toLocaleString("en-GB")} bytes`,
          "body_too_large",
        ),
        file,
      );
      return;
    }
    $("status").textContent = `Analysing ${file.name}…`;
    const dicom = await isDicom(file);
    const predicted = pneumo.requestJson("/predict", { method: "POST", body: form(file) });
    const explained = pneumo.requestJson("/explain?format=layers", { method: "POST", body: form(file) });
    explained.catch(() => {}); // awaited below, once the prediction is shown
    let prediction;
    try {
      prediction = await predicted;
    } catch (error) {
      if (id === current) showError(error, file);
      return;
    }
    if (id !== current) return;
    showPrediction(prediction, file, dicom);
    showFeedback(prediction);
    try {
      const layers = await explained;
      if (id === current) showLayers(layers, dicom);
    } catch (error) {
      if (id !== current) return;
      $("heatmap-note").textContent = `The heatmap could not be computed. ${error.message}`;
      setState("explain-failed");
    }
  }

  // Confirm (the model's call) or correct (the other class): POST /feedback with the request id.
  let answered = null; // {request_id, label} of the prediction on screen
  const OTHER = { NORMAL: "PNEUMONIA", PNEUMONIA: "NORMAL" };
  const WORD = { NORMAL: "normal", PNEUMONIA: "pneumonia" };

  function showFeedback(prediction) {
    answered = { request_id: prediction.request_id, label: prediction.label };
    $("confirm").textContent = `Confirm: ${WORD[prediction.label]}`;
    $("correct").textContent = `Correct: ${WORD[OTHER[prediction.label]]}`;
    $("feedback-status").textContent = "";
    $("feedback").dataset.state = "open";
  }

  async function sendFeedback(label) {
    const reviewer = $("reviewer").value.trim();
    if (!reviewer) {
      $("feedback-status").textContent = "Enter your name or staff id first.";
      $("reviewer").focus();
      return;
    }
    localStorage.setItem("pneumo-reviewer", reviewer);
    const body = JSON.stringify({ request_id: answered.request_id, label, reviewer });
    try {
      const answer = await pneumo.requestJson("/feedback", {
        method: "POST", headers: { "Content-Type": "application/json" }, body,
      });
      const verb = answer.agrees_with_model ? "Confirmed" : "Corrected";
      $("feedback-status").textContent =
        `${verb}: ${WORD[answer.label]}.` + (answer.replaced ? " (Your earlier answer was replaced.)" : "");
      $("feedback").dataset.state = answer.agrees_with_model ? "confirmed" : "corrected";
    } catch (error) {
      $("feedback-status").textContent = `Not recorded: ${error.message} ${error.detail || ""}`.trim();
      $("feedback").dataset.state = "failed";
    }
  }

  function setOpacity() {
    const slider = $("opacity");
    const text = `${slider.value} %`;
    $("heatmap").style.opacity = String(slider.value / 100);
    $("opacity-value").textContent = text;
    slider.setAttribute("aria-valuetext", text);
  }

  function wireDropzone() {
    const zone = $("dropzone");
    const input = $("file");
    input.addEventListener("change", () => {
      if (input.files.length) analyse(input.files[0]);
    });
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      zone.addEventListener(type, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const files = event.dataTransfer ? event.dataTransfer.files : [];
      if (files.length) analyse(files[0]);
    });
    // A file dropped beside the zone must not make the browser leave the page to open it.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
  }

  document.addEventListener("DOMContentLoaded", async () => {
    wireDropzone();
    $("opacity").addEventListener("input", setOpacity);
    $("reviewer").value = localStorage.getItem("pneumo-reviewer") || "";
    $("confirm").addEventListener("click", () => sendFeedback(answered.label));
    $("correct").addEventListener("click", () => sendFeedback(OTHER[answered.label]));
    setOpacity();
    try {
      meta = await pneumo.metadata();
      $("size-limit").textContent = `· up to ${formatBytes(meta.limits.max_request_bytes)}`;
    } catch (_) {
      meta = null; // the header already says the details are unavailable
    }
    document.body.dataset.ready = "true";
  });
})();

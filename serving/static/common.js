// Shared by both pages: number formats, API errors in plain words, the model line in the header.
"use strict";

const pneumo = (() => {
  const RATE_METRICS = new Set(["accuracy", "precision", "sensitivity", "specificity", "f1"]);

  function percent(value, digits = 1) {
    return `${(100 * value).toFixed(digits)} %`;
  }

  // Rates read best as percentages; AUCs, Brier score and calibration error as 3 decimals.
  function formatMetric(name, value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    return RATE_METRICS.has(name) ? percent(value) : Number(value).toFixed(3);
  }

  function formatBytes(bytes) {
    if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(bytes >= 1e7 ? 0 : 1)} MB`;
    if (bytes >= 1e3) return `${Math.round(bytes / 1e3)} kB`;
    return `${bytes} bytes`;
  }

  function formatDate(text) {
    if (!text) return null;
    const date = new Date(text);
    if (Number.isNaN(date.getTime())) return text;
    return date.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
  }

  // The service answers every refusal with {"error", "code"}: say what happened and what to do.
  const PLAIN = {
    unsupported_format: "This file is not a JPEG, PNG or DICOM image. Choose a chest radiograph saved in one of these formats.",
    unsupported_media_type: "This kind of file is not accepted. Choose a JPEG, PNG or DICOM chest radiograph.",
    content_type_mismatch: "The file's type does not match its contents. Save the image again as JPEG, PNG or DICOM.",
    invalid_image: "The image could not be read: the file seems damaged or incomplete. Export it again and retry.",
    corrupt_image: "The image could not be read: the file is damaged or incomplete, and a damaged image is never assessed. Export it again and retry.",
    invalid_dicom: "The DICOM file could not be read: it seems damaged or incomplete. Export it again and retry.",
    empty_body: "The file is empty. Choose the radiograph again.",
    no_file: "No file was received. Choose the radiograph again.",
    body_too_large: "The file is too large to analyse. Export a smaller version and retry.",
    too_many_pixels: "The image has too many pixels to analyse. Export a smaller version and retry.",
    image_too_large: "The image is too large to analyse at this bit depth. Export it as an 8-bit grayscale image and retry.",
    body_timeout: "The file took too long to arrive. Check the connection and retry.",
    invalid_multipart: "The upload was malformed (for example a very long file name). Rename the file and retry.",
    overloaded: "The service is busy. Try again in a few seconds.",
    image_too_small: "The image is too small to assess. Use the original radiograph rather than a thumbnail.",
    unsupported_dicom: "This DICOM file is of a kind pneumo cannot read (for example colour, multi-frame or compressed in an unsupported way). Export a single grayscale image.",
    model_unavailable: "The model is busy or restarting. Try again in a few seconds.",
    unknown_request: "This prediction is not in the service's log, so the answer cannot be joined to it.",
    store_unavailable: "The service's log cannot be reached right now. Try again in a few seconds.",
    monitoring_disabled: "The service does not keep a log of its predictions, so answers cannot be recorded.",
  };

  class ApiError extends Error {
    constructor(plain, detail, code) {
      super(plain);
      this.detail = detail;
      this.code = code;
    }
  }

  // fetch() that returns parsed JSON or throws an ApiError whose message a clinician can read.
  async function requestJson(url, options = {}) {
    let response;
    try {
      response = await fetch(url, options);
    } catch (_) {
      throw new ApiError("The server could not be reached. Check that the pneumo service is running, then retry.", "", "network");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.ok && body !== null) return body;
    const code = body && typeof body.code === "string" ? body.code : `http_${response.status}`;
    const detail = body && typeof body.error === "string" ? body.error : "";
    let plain = PLAIN[code];
    if (!plain) {
      plain = response.status >= 500
        ? "The server could not analyse this file because of an internal problem. Try again; if it persists, tell the service's operator."
        : "The server could not analyse this file.";
    }
    throw new ApiError(plain, detail, code);
  }

  let metadataPromise = null;
  function metadata() {
    metadataPromise ??= requestJson("/metadata");
    return metadataPromise;
  }

  function modelName(model) {
    return `${model.name} ${model.version}`;
  }

  async function showModelLine() {
    const line = document.getElementById("model-line");
    if (!line) return;
    try {
      const meta = await metadata();
      line.textContent = `Model ${modelName(meta.model)} · decision threshold ${percent(meta.threshold)}`;
    } catch (error) {
      line.textContent = `Model details unavailable: ${error.message}`;
    }
  }

  // Small DOM builder: el("td", {class: "x"}, "text", child) -> element.
  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  document.addEventListener("DOMContentLoaded", showModelLine);
  return { percent, formatMetric, formatBytes, formatDate, requestJson, metadata, modelName, el, ApiError };
})();

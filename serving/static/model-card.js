// The model card: /model_card (the served model's packaged files) drawn as tables and an SVG ROC.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { el, percent, formatMetric, formatDate } = pneumo;
  const SVG = "http://www.w3.org/2000/svg";

  const METRICS = [
    ["accuracy", "Accuracy"],
    ["sensitivity", "Sensitivity (recall)"],
    ["specificity", "Specificity"],
    ["precision", "Precision (positive predictive value)"],
    ["f1", "F1 score"],
    ["roc_auc", "ROC AUC"],
    ["pr_auc", "PR AUC (average precision)"],
    ["brier", "Brier score (lower is better)"],
    ["ece", "Expected calibration error (lower is better)"],
  ];
  const PARTS = [
    ["test", "All test images"],
    ["test_bacterial", "Bacterial pneumonia vs normal"],
    ["test_viral", "Viral pneumonia vs normal"],
  ];
  const SPLITS = [
    ["train", "Training"],
    ["val", "Validation"],
    ["test", "Test"],
  ];

  // Wide tables scroll sideways on a narrow screen instead of widening the page.
  function scrollable(table) {
    return el("div", { class: "table-scroll" }, table);
  }

  function missing(text) {
    return el("p", { class: "missing" }, text);
  }

  function renderIdentity(card) {
    const model = card.model;
    const registered = model.mlflow_version
      ? `version ${model.mlflow_version} of ${model.registered_model || model.name}`
      : "not registered: packaged from a workspace";
    const facts = [
      ["Name", model.name],
      ["Version", model.version],
      ["MLflow registry", registered],
      ["Registered", formatDate(model.registered_at) || "—"],
      ["Packaged for serving", formatDate(model.packaged_at) || "—"],
      ["Network", `${model.arch || "—"}, input ${card.image_size} × ${card.image_size} grayscale`],
      [
        "Decision threshold",
        `${percent(card.threshold, 2)}` +
          (model.threshold_rule ? ` (rule: ${model.threshold_rule}, chosen on the validation split)` : ""),
      ],
      ["Training run", model.run_id || "—"],
      [
        "Weights sha256 (models/model.pt; the registry's model_sha256, pneumo predict's model)",
        model.weights_sha256 ? `${model.weights_sha256.slice(0, 16)}…` : "—",
      ],
      [
        "Served model digest (sha256 of weights, decision and guard; the prediction log's)",
        model.sha256 ? `${model.sha256.slice(0, 16)}…` : "—",
      ],
    ];
    const list = $("identity");
    list.replaceChildren();
    for (const [term, value] of facts) list.append(el("dt", {}, term), el("dd", {}, value));
  }

  function renderTrainingData(data) {
    const box = $("training-data");
    box.replaceChildren();
    if (!data) {
      box.append(missing("Not packaged with this model: the split summary (metrics/split.json) was not available when the model was packaged."));
      return;
    }
    const head = el(
      "tr", {},
      el("th", { scope: "col" }, "Split"),
      el("th", { scope: "col", class: "num" }, "Images"),
      el("th", { scope: "col", class: "num" }, "Normal"),
      el("th", { scope: "col", class: "num" }, "Pneumonia"),
      el("th", { scope: "col", class: "num" }, "Patients"),
      el("th", { scope: "col", class: "num" }, "Pneumonia share"),
    );
    const rows = SPLITS.filter(([key]) => data[key]).map(([key, name]) => {
      const s = data[key];
      return el(
        "tr", { dataset: { split: key } },
        el("th", { scope: "row" }, name),
        el("td", { class: "num" }, s.images),
        el("td", { class: "num" }, s.NORMAL),
        el("td", { class: "num" }, s.PNEUMONIA),
        el("td", { class: "num" }, s.patients),
        el("td", { class: "num" }, percent(s.pneumonia_share)),
      );
    });
    box.append(scrollable(
      el("table", { class: "data" },
        el("caption", {}, "Images per split and class"),
        el("thead", {}, head),
        el("tbody", {}, ...rows)),
    ));
    const overlap = data.patients_in_two_splits;
    const notes = el("ul", { class: "notes" });
    notes.append(
      el("li", { class: overlap === 0 ? "ok" : "warn" },
        overlap === 0
          ? "Patient-disjoint: no patient has images in two splits (checked when the split was made)."
          : `Warning: ${overlap} patients have images in more than one split.`),
    );
    if (data.test_source) notes.append(el("li", {}, `Test split: ${data.test_source}.`));
    if (data.excluded_for_test_patients) {
      notes.append(el("li", {}, `${data.excluded_for_test_patients} training images of test-split patients were left out.`));
    }
    box.append(notes);
  }

  function metricCell(part, values, name) {
    const value = values ? values[name] : null;
    const ci = values && values.ci ? values.ci[name] : null;
    const cell = el("td", {
      class: "num",
      dataset: { metric: `${part}.${name}`, value: value === null || value === undefined ? "" : String(value) },
    });
    cell.append(el("span", { class: "value" }, formatMetric(name, value)));
    if (ci && ci[0] !== null && ci[1] !== null) {
      cell.append(el("span", { class: "ci" }, `${formatMetric(name, ci[0])} – ${formatMetric(name, ci[1])}`));
    }
    return cell;
  }

  function renderMetrics(card) {
    const box = $("metrics");
    box.replaceChildren();
    const evaluation = card.evaluation || {};
    // A workspace report is nested ({"test": {...}}); a registry model may carry headline numbers only.
    const nested = typeof evaluation.test === "object" && evaluation.test !== null;
    const parts = nested
      ? PARTS.filter(([key]) => evaluation[key])
      : [["test", "Test split"]];
    const valuesOf = (key) => (nested ? evaluation[key] : evaluation);
    const shown = METRICS.filter(([name]) => parts.some(([key]) => {
      const values = valuesOf(key);
      return values && values[name] !== undefined;
    }));
    if (!shown.length) {
      box.append(missing("No evaluation metrics were packaged with this model."));
      return null;
    }
    const head = el("tr", {}, el("th", { scope: "col" }, "Metric"),
      ...parts.map(([, label]) => el("th", { scope: "col", class: "num" }, label)));
    const rows = shown.map(([name, label]) => el(
      "tr", {},
      el("th", { scope: "row" }, label),
      ...parts.map(([key]) => metricCell(key, valuesOf(key), name)),
    ));
    const hasIntervals = parts.some(([key]) => valuesOf(key) && valuesOf(key).ci && Object.keys(valuesOf(key).ci).length);
    box.append(scrollable(el("table", { class: "data metrics" },
      el("caption", {}, hasIntervals
        ? "Point estimate, with the bootstrap confidence interval (whole patients resampled) beneath"
        : "Point estimates (no confidence intervals were packaged with this model)"),
      el("thead", {}, head),
      el("tbody", {}, ...rows))));
    const test = valuesOf("test") || {};
    const notes = el("ul", { class: "notes" });
    if (test.n) notes.append(el("li", {}, `${test.n} test images, at the decision threshold of ${percent(card.threshold, 2)}.`));
    if (parts.length > 1) {
      notes.append(el("li", {}, "The slices compare the normal images with the pneumonias of one type."));
    }
    notes.append(el("li", {}, "The threshold was fixed on the validation split before the test split was scored."));
    box.append(notes);
    return test;
  }

  function svg(tag, attributes = {}, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== null) node.textContent = text;
    return node;
  }

  function renderRoc(roc, test) {
    const box = $("roc");
    box.replaceChildren();
    if (!roc || !roc.fpr || roc.fpr.length < 2) {
      box.append(missing("The ROC curve (plots/evaluate/roc.csv) was not packaged with this model."));
      return;
    }
    const size = 320;
    const pad = { left: 52, right: 16, top: 14, bottom: 46 };
    const x = (v) => pad.left + v * size;
    const y = (v) => pad.top + (1 - v) * size;
    const auc = test && typeof test.roc_auc === "number" ? test.roc_auc.toFixed(3) : null;
    const root = svg("svg", {
      viewBox: `0 0 ${pad.left + size + pad.right} ${pad.top + size + pad.bottom}`,
      role: "img",
      "aria-labelledby": "roc-title roc-desc",
      class: "roc",
    });
    root.append(svg("title", { id: "roc-title" }, "ROC curve on the test split"));
    let description = `Sensitivity against 1 − specificity over every threshold${auc ? `; area under the curve ${auc}` : ""}.`;
    const operating = test && typeof test.sensitivity === "number" && typeof test.specificity === "number";
    if (operating) {
      description += ` At the decision threshold: sensitivity ${percent(test.sensitivity)}, specificity ${percent(test.specificity)}.`;
    }
    root.append(svg("desc", { id: "roc-desc" }, description));
    for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
      root.append(svg("line", { x1: x(tick), x2: x(tick), y1: y(0), y2: y(1), class: "grid" }));
      root.append(svg("line", { x1: x(0), x2: x(1), y1: y(tick), y2: y(tick), class: "grid" }));
      root.append(svg("text", { x: x(tick), y: y(0) + 18, class: "tick", "text-anchor": "middle" }, tick.toFixed(2)));
      root.append(svg("text", { x: x(0) - 8, y: y(tick) + 4, class: "tick", "text-anchor": "end" }, tick.toFixed(2)));
    }
    root.append(svg("rect", { x: x(0), y: y(1), width: size, height: size, class: "frame" }));
    root.append(svg("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "chance" }));
    const points = roc.fpr.map((f, i) => `${x(f).toFixed(1)},${y(roc.tpr[i]).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points, class: "curve" }));
    root.append(svg("text", { x: x(0.5), y: y(0) + 38, class: "axis", "text-anchor": "middle" }, "1 − specificity (false positive rate)"));
    root.append(svg("text", {
      x: 14, y: y(0.5), class: "axis", "text-anchor": "middle", transform: `rotate(-90 14 ${y(0.5)})`,
    }, "sensitivity"));
    if (operating) {
      const px = x(1 - test.specificity);
      const py = y(test.sensitivity);
      root.append(svg("circle", { cx: px, cy: py, r: 6, class: "operating" }));
      root.append(svg("text", { x: px + 10, y: py + 16, class: "label" }, "decision threshold"));
    }
    if (auc) root.append(svg("text", { x: x(0.96), y: y(0.06), class: "auc", "text-anchor": "end" }, `AUC ${auc}`));
    box.append(root);
  }

  function renderConfusion(test, threshold) {
    const box = $("confusion");
    box.replaceChildren();
    const c = test && test.confusion;
    if (!c) {
      box.append(missing("The confusion matrix was not packaged with this model (registry headline metrics only)."));
      return;
    }
    const cell = (count, name, total) => el(
      "td", { class: name.startsWith("True") ? "right" : "wrong", dataset: { cell: name } },
      el("span", { class: "count" }, count),
      el("span", { class: "ci" }, name),
      el("span", { class: "ci" }, `${total ? percent(count / total) : "—"} of the row`),
    );
    const normal = c.tn + c.fp;
    const pneumonia = c.fn + c.tp;
    box.append(scrollable(el("table", { class: "data confusion" },
      el("caption", {}, `Test images at the decision threshold of ${percent(threshold, 2)}`),
      el("thead", {}, el("tr", {},
        el("td", {}),
        el("th", { scope: "col" }, "Predicted normal"),
        el("th", { scope: "col" }, "Predicted pneumonia"))),
      el("tbody", {},
        el("tr", {}, el("th", { scope: "row" }, `Normal (${normal})`),
          cell(c.tn, "True negative", normal), cell(c.fp, "False positive", normal)),
        el("tr", {}, el("th", { scope: "row" }, `Pneumonia (${pneumonia})`),
          cell(c.fn, "False negative", pneumonia), cell(c.tp, "True positive", pneumonia))))));
  }

  function renderComparison(rows) {
    const box = $("comparison");
    box.replaceChildren();
    if (!rows || !rows.length) {
      box.append(missing("Not computed for this model: `pneumo compare` had not been run when it was packaged."));
      return;
    }
    const columns = [
      ["model", "Model"], ["source", "Source"], ["test_split", "Test split"],
      ["accuracy", "Accuracy"], ["sensitivity", "Sensitivity"], ["specificity", "Specificity"],
      ["f1", "F1"], ["roc_auc", "ROC AUC"], ["threshold", "Threshold"],
    ];
    const numeric = new Set(["accuracy", "sensitivity", "specificity", "f1", "roc_auc", "threshold"]);
    const body = rows.map((row) => el(
      "tr", { class: String(row.model || "").startsWith("pneumo") ? "ours" : null },
      ...columns.map(([key], index) => {
        const value = row[key];
        const text = numeric.has(key) ? formatMetric(key, typeof value === "number" ? value : null) : (value ?? "—");
        return index === 0 ? el("th", { scope: "row" }, text) : el("td", { class: numeric.has(key) ? "num" : null }, text);
      }),
    ));
    box.append(scrollable(el("table", { class: "data comparison" },
      el("caption", {}, "Measured here on the same split, and as published"),
      el("thead", {}, el("tr", {}, ...columns.map(([key, label]) => el("th", { scope: "col", class: numeric.has(key) ? "num" : null }, label)))),
      el("tbody", {}, ...body))));
    box.append(el("p", { class: "hint" },
      "Published rows were measured on the official Kermany test split (624 images), a different test set: " +
      "they orient rather than compare like for like."));
  }

  // Beside the carved test: what a new site's acquisition does (pneumo/evaluation/stress.py, validation split).
  function renderNewSite(site, evaluation) {
    const box = $("new-site");
    box.replaceChildren();
    if (!site) {
      box.append(missing("Not packaged with this model: the stress battery (metrics/stress.json) was not available."));
      return;
    }
    const test = (evaluation && typeof evaluation.test === "object") ? evaluation.test : (evaluation || {});
    const cf = site.counterfactual || {};
    const at2 = (name) => (cf[name] || {})["2"] || {};
    const rows = [
      ["Carved test split (same machines as training)", test],
      ["Validation split, as stored", site.clean || {}],
      ["Normal radiographs given the pneumonia class's sharpness", at2("normal_as_pneumonia")],
      ["Pneumonia radiographs given the normal class's sharpness", at2("pneumonia_as_normal")],
      ["Both classes given the other's sharpness", at2("swap")],
    ];
    const columns = [["accuracy", "Accuracy"], ["sensitivity", "Sensitivity"],
      ["specificity", "Specificity"], ["roc_auc", "ROC AUC"]];
    box.append(scrollable(el("table", { class: "data new-site", id: "new-site-table" },
      el("caption", {}, "At the shipped threshold; the counterfactual rows change only the acquisition look (severity 2)"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Images"),
        ...columns.map(([, label]) => el("th", { scope: "col", class: "num" }, label)))),
      el("tbody", {}, ...rows.map(([label, values]) => el("tr", {},
        el("th", { scope: "row" }, label),
        ...columns.map(([key]) => el("td", { class: "num" },
          formatMetric(key, typeof values[key] === "number" ? values[key] : null)))))))));
    const facts = [];
    const summary = cf.summary || {};
    if (typeof summary.cue_effect === "number") {
      facts.push(`Cue effect: ${summary.cue_effect.toFixed(2)} logits (how far the network moves towards the class whose look an image was given; 0 = blind to the look).`);
    }
    if (site.stress) {
      facts.push(`Stress battery (14 shifts of both classes alike, 2 severities): mean ROC AUC ${formatMetric("roc_auc", site.stress.mean_roc_auc)}, worst specificity ${formatMetric("specificity", site.stress.worst_specificity)} (${site.stress.worst_specificity_shift}).`);
    }
    if (site.shortcut && typeof site.shortcut.roc_auc === "number") {
      facts.push(`Shortcut meter of the training data: acquisition cues alone separate the classes with ROC AUC ${formatMetric("roc_auc", site.shortcut.roc_auc)} (strongest: ${site.shortcut.strongest_cue})${site.shortcut.warning ? " — above the warning level: the network could learn the scanner; the rows above show whether it did" : ""}.`);
    }
    box.append(...facts.map((text) => el("p", { class: "hint" }, text)));
  }

  function renderLive(live) {
    const box = $("live");
    box.replaceChildren();
    if (!live.available) {
      box.append(missing(`The prediction log cannot be read: ${live.reason}`));
      return;
    }
    if (!live.days.length) {
      box.append(missing("No prediction in the last 30 days."));
      return;
    }
    const rate = (value) => (value === null || value === undefined ? "—" : percent(value));
    const head = el("tr", {}, ...["Day", "Requests", "Called pneumonia", "Out of distribution",
      "Referred", "Reviewed", "Reviewer agreed"].map((text) => el("th", { scope: "col" }, text)));
    const row = (name, d) => el("tr", {}, el("th", { scope: "row" }, name), el("td", {}, d.requests),
      el("td", {}, rate(d.positive_rate)), el("td", {}, rate(d.ood_rate)),
      el("td", {}, rate(d.referral_rate)), el("td", {}, d.reviewed), el("td", {}, rate(d.agreement)));
    const body = el("tbody", {}, ...live.days.map((d) => row(d.day, d)));
    const foot = el("tfoot", {}, row("All", live.total));
    box.append(scrollable(el("table", { class: "metrics", id: "live-table" }, el("thead", {}, head), body, foot)));
  }

  function wireTabs() {
    const tabs = [["tab-card", "panel-card"], ["tab-live", "panel-live"]];
    for (const [tab, panel] of tabs) {
      $(tab).addEventListener("click", async () => {
        for (const [other, otherPanel] of tabs) {
          $(other).setAttribute("aria-selected", String(other === tab));
          $(otherPanel).hidden = otherPanel !== panel;
        }
        if (tab === "tab-live") {
          try {
            renderLive(await pneumo.requestJson("/live"));
          } catch (error) {
            $("live").replaceChildren(missing(`Live figures unavailable: ${error.message}`));
          }
          document.body.dataset.live = "ready";
        }
      });
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    wireTabs();
    let card;
    try {
      card = await pneumo.requestJson("/model_card");
    } catch (error) {
      $("status").textContent = "";
      $("error-title").textContent = `The model card could not be loaded. ${error.message}`;
      $("error-detail").textContent = error.detail || "";
      $("error").hidden = false;
      document.body.dataset.state = "error";
      return;
    }
    renderIdentity(card);
    renderTrainingData(card.training_data);
    const test = renderMetrics(card);
    renderRoc(card.roc, test);
    renderConfusion(test, card.threshold);
    renderNewSite(card.new_site, card.evaluation);
    renderComparison(card.comparison);
    $("status").textContent = `Model card of ${pneumo.modelName(card.model)} loaded.`;
    document.body.dataset.state = "ready";
  });
})();

// The API docs page: Swagger UI over /docs.json, with no online validator badge.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // the default badge asks a public validator about the document
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    onComplete: () => {
      document.body.dataset.ready = "true";
    },
  });
});

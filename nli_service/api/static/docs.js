// Starts Swagger UI on this service's /openapi.json. A file, not an inline script: the
// page's Content-Security-Policy allows only scripts served by the service.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null, // the default sends the document to an online validator
  });
});

// Starts Swagger UI for /docs (FastAPI's own page does this in an inline script and loads Swagger UI from a CDN).
//
// "Try it out" needs to know that the API takes `Authorization: Bearer KEY`. If the server's OpenAPI
// document does not declare a security scheme, we declare one here, on the copy the page shows, for the
// operations that document a 401 answer (those are the ones that read the key). A declared scheme wins.
"use strict";

(async () => {
  const root = document.getElementById("swagger-ui");
  let spec;
  try {
    // Beside the page: /docs reads /openapi.json, /v1/docs (the OpenAI-compatible API's) /v1/openapi.json.
    const url = new URL("openapi.json", document.baseURI);
    const response = await fetch(url);
    if (!response.ok) throw new Error(`GET ${url.pathname} answered ${response.status}`);
    spec = await response.json();
  } catch (error) {
    root.textContent = `Could not load the API description: ${error.message}`;
    return;
  }
  const components = (spec.components = spec.components || {});
  if (!components.securitySchemes || !Object.keys(components.securitySchemes).length) {
    components.securitySchemes = {
      bearer: { type: "http", scheme: "bearer", description: "an API key: `charrnn keys create NAME`" },
    };
    for (const operations of Object.values(spec.paths || {})) {
      for (const operation of Object.values(operations)) {
        if (operation && operation.responses && operation.responses["401"] && !operation.security) {
          operation.security = [{ bearer: [] }];
        }
      }
    }
  }
  window.ui = SwaggerUIBundle({
    spec,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null, // no badge from the online validator: this page reaches nothing but this server
    oauth2RedirectUrl: `${location.origin}/docs/oauth2-redirect`,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();

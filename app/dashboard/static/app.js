// charrnn dashboard: native ES modules, no framework, no build step, nothing from a CDN.
//
// - js/api.js: every call (the key in the Authorization header, errors with the server's message, a 401 signs
//   the tab out); js/events.js: Server-Sent Events over fetch; js/chart.js: the loss chart.
// - js/router.js: the registry of views, chosen by the URL's hash; js/views/: one module per view.
// - Everything from users or models goes into the page as text (textContent), never as HTML.

import { addView, route } from "./js/router.js";
import "./js/views/signin.js";
import corpora from "./js/views/corpora.js";
import inspect from "./js/views/inspect.js";
import job from "./js/views/job.js";
import jobs from "./js/views/jobs.js";
import newJob from "./js/views/new-job.js";
import playground from "./js/views/playground.js";

for (const view of [corpora, newJob, jobs, job, playground, inspect]) addView(view);
window.addEventListener("hashchange", route);
route();

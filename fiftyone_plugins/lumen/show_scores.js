// Lumen's JavaScript operators: show each box's score in its text by default (show_scores), and draw an
// opened sample again after Ask Lumen wrote to it (show_sample, further down).
//
// Why JavaScript: which label attributes a box's text shows is the App's per-browser setting (the sidebar's
// label-attribute picker, kept in localStorage `shownLabelAttributes-<dataset id>`); FiftyOne 1.22 has no
// dataset or App-config setting for it, and no Python operation that sets it. The Python operator that runs
// when a Lumen review dataset opens (declare_prompted_fields) triggers this one with the fields whose labels
// carry a confidence; it switches `confidence` on for each field this browser has no choice for yet. A field
// the labeler already set in the picker is left as they set it.
//
// Plain JavaScript on the App's globals (window.__foo__ operators, window.__fos__ state, window.recoil):
// no build step. FiftyOne loads it as a <script> (fiftyone.yml: js_bundle).
(function () {
  var foo = window.__foo__, fos = window.__fos__, recoil = window.recoil;
  if (!foo || !fos || !recoil || !fos.shownLabelAttributes) {
    console.warn("Lumen: the App does not expose what show_scores needs; box texts show the class only");
    return;
  }

  function chosenInThisBrowser(datasetId) {
    try {
      return JSON.parse(window.localStorage.getItem("shownLabelAttributes-" + datasetId) || "{}") || {};
    } catch (e) {
      return {};
    }
  }

  class ShowScores extends foo.Operator {
    get config() {
      return new foo.OperatorConfig({
        name: "show_scores",
        label: "Lumen: show box scores",
        unlisted: true,
      });
    }

    useHooks() {
      // one field per call: the setting's setter rewrites the whole per-dataset map from the state it read,
      // so several sets in one call keep only the last field
      var show = recoil.useRecoilCallback(function (cb) {
        return function (path) {
          cb.set(fos.shownLabelAttributes(path), ["label", "confidence"]);
        };
      }, []);
      return { show: show };
    }

    async execute(ctx) {
      var params = ctx.params || {};
      var chosen = chosenInThisBrowser(params.dataset_id);
      var paths = (params.paths || []).filter(function (p) { return !(p in chosen); });
      for (var i = 0; i < paths.length; i++) {
        ctx.hooks.show(paths[i]);
        await new Promise(function (done) { setTimeout(done, 0); });  // let the App store it before the next
      }
      return { shown: paths };
    }
  }

  // The opened sample, drawn again from the labels Python just wrote. Why: FiftyOne's `reload_samples`
  // refreshes the grid and the sidebar's counts, but the opened sample's canvas keeps the sample it loaded
  // (its query is cached by sample id and view); only the App's own tagging path replaces it, through
  // useUpdateSamples, which is what this operator calls with the sample Python sends (as the App's server
  // serialises it).
  class ShowSample extends foo.Operator {
    get config() {
      return new foo.OperatorConfig({ name: "show_sample", label: "Lumen: draw the opened sample again", unlisted: true });
    }

    useHooks() {
      return { update: fos.useUpdateSamples() };
    }

    async execute(ctx) {
      var params = ctx.params || {};
      if (!params.id || !params.sample) return { shown: false };
      ctx.hooks.update([[params.id, params.sample]]);
      return { shown: true };
    }
  }

  foo.registerOperator(ShowScores, "@lumen/review");
  if (fos.useUpdateSamples) foo.registerOperator(ShowSample, "@lumen/review");
})();

// Merged by @jupyter/builder into its own config (package.json "jupyterlab.webpackConfig").
// The default "deterministic" ids hash the module-federation container's identifier, which
// holds the absolute paths of the exposed modules: the same sources built in two checkouts
// gave two different bundles. Natural ids depend only on the module graph, so the committed
// build is byte-identical wherever it is rebuilt (make labext-check relies on that).
module.exports = {
  optimization: {
    moduleIds: 'natural',
    chunkIds: 'natural'
  }
};

// Render the formulas pymdownx.arithmatex (generic mode) marks, on every page Material loads,
// including pages reached by instant navigation.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
    ],
    throwOnError: true,
  });
});

"""masa's former defaults. Benchmark arms measured on them pin them, so that a rerun repeats what was
measured after the defaults moved on."""

PAPER_REASONED = ["meta.prompt=paper", "meta.reasoning=true"]
"""The paper's meta prompt with <meta> reasoning: the default until verdict-s13 (the compact prompt and the
JSON alone since)."""
BEFORE_S14 = ["meta.n=8", "meta.expert_source=buffer"]
"""M = 8 and the buffer of recent expert targets: the defaults until verdict-s14 (M = 4 and the step's own
targets since)."""

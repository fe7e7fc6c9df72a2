"""masa's former defaults. Benchmark arms measured on them pin them, so that a rerun repeats what was
measured after the defaults moved on."""

PAPER_REASONED = ["meta.prompt=paper", "meta.reasoning=true"]
"""The paper's meta prompt with <meta> reasoning: the default until verdict-s13 (the compact prompt and the
JSON alone since)."""
BEFORE_S14 = ["meta.n=8", "meta.expert_source=buffer"]
"""M = 8 and the buffer of recent expert targets: the defaults until verdict-s14 (M = 4 and the step's own
targets since)."""
BEFORE_S22 = ["meta.prompt=compact", "meta.steps_without_solution_signal=train"]
"""The compact meta prompt and the paper's update of the meta and expert terms alone: algo=masa's defaults
until verdict-s22 (the terse prompt and skipping those steps since; masa-efficient keeps these)."""

"""On-policy distillation (GKD, Agarwal et al. 2024): the student learns on its own samples.

    schedule   the per-optimizer-step decision (student samples with probability λ), seeded and
               resumable
    batch      chat-template batches → prompts, and prompts + sampled completions → training rows
               with their masks
    steps      the glue the trainer calls: replaces every micro-batch of a generated step and keeps
               the logged statistics

Generation itself is the shared generation layer's (``distill_plugin.generation.rollout``); the loss
is the existing fused chunked loss (``losses.terms.LogitTerms``) with the configured divergence.
"""

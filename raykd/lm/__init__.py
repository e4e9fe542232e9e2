"""Language-model pieces that rows of logits cannot express: the decoder model, sampling, on-policy batches.

Everything else a language model needs is the classifier's code unchanged: a token position is a row
(``raykd.engine.rows``), its target the next token, its distill mask the real (non-padding) positions.
"""

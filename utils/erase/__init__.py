"""Erase: the closed-form math (closed_form), the edit loop over a model's matrices (steps), the
paper's per-concept settings (concepts), validation during RECE (validation) and RECE as a library
call (rece). docs/method.md §2-§4."""

"""Networks: layer specs as plain data (no torch), the registry of named nets, specs ->
`nn.Module` with Keras's semantics, and Keras's summary table."""

/// Shape letters used in every doc comment of MambaKit.
///
/// | letter | meaning |
/// | --- | --- |
/// | B | batch |
/// | L | sequence length (time) |
/// | D | d_model (hidden size) |
/// | E | expand factor |
/// | ED | d_inner = E·D (HF `intermediate_size`) |
/// | N | d_state (HF `state_size`) |
/// | R | dt_rank (HF `time_step_rank`) |
/// | K | d_conv (HF `conv_kernel`) |
/// | V | vocabulary size |
/// | BL | B·L rows of a time-major activation |
///
/// Activations are row-major `(B, L, C)`: one row of C channels per token, tokens of a sequence contiguous.
/// Weights keep PyTorch's shapes (`Linear.weight` is `[out, in]`).
public enum ShapeGlossary {}

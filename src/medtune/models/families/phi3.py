"""Phi-3: one fused `qkv_proj` (out = q | k | v) and a fused `gate_up_proj`; partial rotary inside attention;
`sliding_window` (when set) on every block. Adapters target the fused projection: there is no q_proj/v_proj.
IA3 rescales the fused q|k|v outputs (k and v alone cannot be singled out inside one Linear)."""

from medtune.models.families.spec import Family, window_everywhere

FAMILY = Family(
    "phi3",
    ("phi3",),
    layer_types=window_everywhere,
    linears={"qkv_proj": "hidden", "o_proj": "attention", "gate_up_proj": "hidden", "down_proj": "intermediate"},
    adapter_targets=("qkv_proj",),
    ia3_targets=("qkv_proj", "down_proj"),
    notes="attention is one fused qkv_proj",
)

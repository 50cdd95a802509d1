//! PEFT interoperability: adapters `engram lora extract` writes load with the `peft` package on
//! a base made by `transformers`, and adapters PEFT makes merge in engram as in PEFT itself.
//!
//! The Python side makes a tiny random `LlamaForCausalLM` (hidden 64, 2 layers, 4 heads with 2
//! key-value heads, so k/v are 32 × 64; fixed seeds) and two fine-tunes of it: (a) exactly
//! rank-4 deltas on every projection, (b) full-rank small deltas. engram extracts (a) at rank 4
//! and (b) at ranks 8, 32 and 64 (rank 64 is full rank for every matrix and needs
//! `rank_pattern`/`alpha_pattern` for k/v); PEFT loads each adapter on the base and its logits
//! are compared with the fine-tune's; `engram lora apply --dtype f32` is compared with PEFT's
//! `merge_and_unload`. In the other direction, adapters made by `get_peft_model` (B set by
//! hand; plain, and rsLoRA with rank and overlapping alpha patterns) are merged by engram and
//! compared with PEFT's merge; one whose pattern key is a regular expression is refused. The
//! packages go into the tests' shared environment `target/pyenv` (`ENGRAM_SKIP_PY=1` skips).

mod common;
use common::{ok, run_py, s};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn python() -> Option<PathBuf> {
    common::pyenv(
        "PEFT interoperability test",
        "import torch, transformers, peft, safetensors, numpy",
        &["torch", "transformers", "peft", "safetensors", "numpy"],
    )
}

/// Writes DIR/base, DIR/ft-low, DIR/ft-full (model folders) and the PEFT-made adapters
/// DIR/peft-plain, DIR/peft-rs with their merges DIR/peft-*-merged.safetensors.
const MAKE: &str = r#"
import sys
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model

d = sys.argv[1]
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=False)
base = LlamaForCausalLM(cfg).eval()
base.save_pretrained(f"{d}/base", safe_serialization=True)
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

def finetune(name, seed, delta):
    g = torch.Generator().manual_seed(seed)
    m = LlamaForCausalLM(cfg)
    m.load_state_dict(base.state_dict())
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.split(".")[-2] in PROJ:
                p.add_(delta(p.shape, g))
    m.save_pretrained(f"{d}/{name}", safe_serialization=True)

finetune("ft-low", 1, lambda s, g: torch.randn(s[0], 4, generator=g) @ torch.randn(4, s[1], generator=g) * 0.005)
finetune("ft-full", 2, lambda s, g: torch.randn(*s, generator=g) * 0.01)

def peft_made(name, **kw):
    m = AutoModelForCausalLM.from_pretrained(f"{d}/base")
    lc = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], **kw)
    pm = get_peft_model(m, lc)
    # PEFT starts B at zero (no update); give it values so that the merge changes something.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pm.save_pretrained(f"{d}/{name}", safe_serialization=True)
    merged = pm.merge_and_unload()
    save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, f"{d}/{name}-merged.safetensors")

peft_made("peft-plain")
# Two alpha keys match the down projections: PEFT takes the first in the saved (sorted) order.
peft_made("peft-rs", use_rslora=True,
          rank_pattern={"q_proj": 2, "model.layers.1.self_attn.o_proj": 6},
          alpha_pattern={"down_proj": 3, "mlp.down_proj": 5})
# A key that is a regular expression (PEFT's reading), which engram refuses.
peft_made("peft-regex", alpha_pattern={r"layers\.0\.mlp\.down_proj": 1})
"#;

/// Loads each engram adapter with PEFT and measures; prints one JSON object.
const CHECK: &str = r#"
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel
from peft.utils import get_peft_model_state_dict

d = sys.argv[1]
ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(4))

def model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

@torch.no_grad()
def logits(m):
    return m(input_ids=ids).logits.double()

def peft_load(adapter):
    pm = PeftModel.from_pretrained(model(f"{d}/base"), f"{d}/{adapter}").eval()
    # Every factor of the file is in the model, value for value, and nothing else.
    sd = get_peft_model_state_dict(pm)
    file = load_file(f"{d}/{adapter}/adapter_model.safetensors")
    assert set(sd) == set(file), (adapter, sorted(set(sd) ^ set(file))[:4])
    for k in file:
        assert torch.equal(sd[k].float(), file[k].float()), (adapter, k)
    return pm, len(file) // 2

def weights_diff(merged, engram_out):
    e = load_file(f"{d}/{engram_out}/model.safetensors")
    assert set(e) == set(merged), (engram_out, sorted(set(e) ^ set(merged))[:4])
    return max((merged[k].double() - e[k].double()).abs().max().item() for k in merged)

out = {}
base = logits(model(f"{d}/base"))
for ft, adapters in (("ft-low", ["ad-low4"]), ("ft-full", ["ad-full8", "ad-full32", "ad-full64"])):
    want = logits(model(f"{d}/{ft}"))
    out[ft] = {"logits_max_abs": want.abs().max().item(),
               "base_vs_ft_max_abs": (base - want).abs().max().item()}
    for a in adapters:
        pm, modules = peft_load(a)
        got = logits(pm)
        merged = {k: v.contiguous() for k, v in pm.merge_and_unload().state_dict().items()}
        out[a] = {
            "modules": modules,
            "max_abs": (got - want).abs().max().item(),
            # ||logits - ft|| / ||base - ft||: the share of the fine-tune's change left out.
            "rel_to_base": ((got - want).norm() / (base - want).norm()).item(),
            "apply_vs_merge_and_unload": weights_diff(merged, f"ap-{a}"),
        }
b = load_file(f"{d}/base/model.safetensors")
for a in ("peft-plain", "peft-rs"):
    merged = load_file(f"{d}/{a}-merged.safetensors")
    out[a] = {
        "apply_vs_merge_and_unload": weights_diff(merged, f"ap-{a}"),
        "update_max_abs": max((merged[k] - b[k]).abs().max().item() for k in b),
    }
print(json.dumps(out))
"#;

fn f(v: &Value, a: &str, k: &str) -> f64 {
    v[a][k]
        .as_f64()
        .unwrap_or_else(|| panic!("{a}.{k} missing in {v}"))
}

fn json_of(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

fn apply(d: &Path, adapter: &str) -> Value {
    json_of(&[
        "lora",
        "apply",
        "--json",
        "--base",
        s(&d.join("base")),
        "--adapter",
        s(&d.join(adapter)),
        "--dtype",
        "f32",
        "-o",
        s(&d.join(format!("ap-{adapter}"))),
    ])
}

#[test]
fn peft_loads_engram_adapters_and_engram_merges_peft_adapters() {
    let Some(py) = python() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run_py(&py, d, MAKE, &[s(d)]);

    // engram extracts: (a) at its true rank, (b) at three ranks.
    let extract = |ft: &str, rank: usize, out: &str| -> Value {
        json_of(&[
            "lora",
            "extract",
            "--json",
            "--base",
            s(&d.join("base")),
            "--model",
            s(&d.join(ft)),
            "-r",
            &rank.to_string(),
            "-o",
            s(&d.join(out)),
        ])
    };
    let low = extract("ft-low", 4, "ad-low4");
    let rep = &low["report"];
    assert_eq!(rep["modules"].as_array().unwrap().len(), 14, "{rep}");
    assert!(rep["energy"].as_f64().unwrap() > 1.0 - 1e-9, "{rep}");
    assert_eq!(rep["unchanged"], serde_json::json!(["lm_head"]), "{rep}");
    let left: Vec<&str> = rep["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["tensor"].as_str().unwrap())
        .collect();
    assert!(left.contains(&"model.embed_tokens.weight") && left.contains(&"model.norm.weight"));
    let mut energy = Vec::new();
    for r in [8, 32, 64] {
        let rep = extract("ft-full", r, &format!("ad-full{r}"));
        energy.push(rep["report"]["energy"].as_f64().unwrap());
    }
    assert!(energy[0] < energy[1] && energy[1] < energy[2], "{energy:?}");
    for a in ["ad-low4", "ad-full8", "ad-full32", "ad-full64"] {
        apply(d, a);
    }
    // PEFT's own adapters, merged by engram: all 8 modules (4 kinds × 2 layers).
    for a in ["peft-plain", "peft-rs"] {
        let rep = apply(d, a);
        assert_eq!(
            rep["report"]["applied"].as_array().unwrap().len(),
            8,
            "{a}: {rep}"
        );
    }

    let err = common::fails(&[
        "lora",
        "apply",
        "--base",
        s(&d.join("base")),
        "--adapter",
        s(&d.join("peft-regex")),
        "--dtype",
        "f32",
        "-o",
        s(&d.join("ap-peft-regex")),
    ]);
    assert!(
        err.contains("regular expression") && err.contains("down_proj"),
        "{err}"
    );

    let out = run_py(&py, d, CHECK, &[s(d)]);
    let m: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    eprintln!("measured: {m:#}");

    // (a) An exact rank-4 delta extracted at rank 4: PEFT's logits are the fine-tune's up to
    // f32 rounding (measured: max |Δlogits| 1.9e-7 for logits up to 0.52, 4e-7 relative).
    let scale = f(&m, "ft-low", "logits_max_abs");
    let e = f(&m, "ad-low4", "max_abs");
    assert!(
        e <= 1e-5 * scale,
        "rank-4 adapter of a rank-4 delta: max |Δlogits| {e}"
    );
    assert!(f(&m, "ft-low", "base_vs_ft_max_abs") > 1e3 * e, "{m}");
    assert_eq!(m["ad-low4"]["modules"], 14);
    // (b) Full-rank deltas: the error falls with the rank and is below the base's (measured
    // ‖logits − ft‖/‖base − ft‖ 0.76 at rank 8, 0.25 at rank 32); at rank 64 (full for every
    // matrix, k/v through rank_pattern) it is rounding again (measured max 3e-7, 6e-7 relative).
    let rel: Vec<f64> = ["ad-full8", "ad-full32", "ad-full64"]
        .iter()
        .map(|a| f(&m, a, "rel_to_base"))
        .collect();
    assert!(
        rel[0] < 0.95 && rel[1] < 0.8 * rel[0] && rel[2] < 1e-4,
        "{rel:?}"
    );
    let e64 = f(&m, "ad-full64", "max_abs");
    assert!(
        e64 <= 1e-5 * f(&m, "ft-full", "logits_max_abs"),
        "rank 64: {e64}"
    );
    // engram's merge-and-unload equals PEFT's, for engram's adapters and PEFT's own (plain,
    // and rsLoRA with rank and overlapping alpha patterns); measured: bit-identical.
    for a in [
        "ad-low4",
        "ad-full8",
        "ad-full32",
        "ad-full64",
        "peft-plain",
        "peft-rs",
    ] {
        let e = f(&m, a, "apply_vs_merge_and_unload");
        assert!(
            e <= 1e-6,
            "{a}: engram apply vs merge_and_unload: max |Δw| {e}"
        );
    }
    for a in ["peft-plain", "peft-rs"] {
        assert!(
            f(&m, a, "update_max_abs") > 1e-2,
            "{a}: the adapter changes nothing"
        );
    }
}

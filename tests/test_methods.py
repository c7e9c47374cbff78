import pytest
import torch

from medtune.infra.errors import MedtuneError
from medtune.methods.params import count_params, unique_params
from medtune.methods.registry import get_method
from medtune.models import loading
from medtune.training.forward import LossModule


def fresh(tiny):
    m, tok, _ = loading.load(tiny)
    return m, tok


def one_step(model, tok, scope="all"):
    from medtune.data.batching import collate
    from medtune.data.tokenize import Example

    torch.manual_seed(0)
    ex = [
        Example("a", [5, 9, 17, 33, 2, 71, tok.eos_token_id], 2, False),
        Example("b", [8, 44, 3, tok.eos_token_id], 1, False),
    ]
    batch = collate(ex, tok.pad_token_id)
    module = LossModule(model, scope)
    params = [p for _, p in unique_params(model) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    nll, _ = module(batch)
    (nll / int(batch[f"scored_{scope}"].sum())).backward()
    opt.step()


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


CASES = {
    "lora": ({}, lambda n: "lora_" in n),
    "boft": ({"block_size": 16}, lambda n: "boft_" in n),
    "oft": ({"block_size": 16}, lambda n: "oft_" in n),
    "ia3": ({}, lambda n: "ia3_" in n),
    "full": ({}, lambda n: True),
    "selective": ({"layers": 1, "head": "untied"}, lambda n: ".layers.3." in n or n.startswith("lm_head")),
}


@pytest.mark.parametrize("method", list(CASES))
def test_exactly_intended_parameters_change(method, tiny):
    args, intended = CASES[method]
    model, tok = fresh(tiny)
    spec = get_method(method)
    model, report = spec.apply(model, spec.make_config(args))
    before = snapshot(model)
    one_step(model, tok)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed, "nothing trained"
    assert changed <= trainable
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
        else:
            assert intended(n), f"{n} trainable but not intended"
    assert report.trainable == sum(p.numel() for _, p in unique_params(model) if p.requires_grad)


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_selective_tied_vs_untied_input_embeddings(head, tiny):
    model, tok = fresh(tiny)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    spec = get_method("selective")
    model, report = spec.apply(model, spec.make_config({"head": head}))
    one_step(model, tok)
    emb_changed = not torch.equal(model.get_input_embeddings().weight, emb_before)
    assert emb_changed == (head == "tied")
    assert any(n.startswith(f"head {head}:") for n in report.notes)  # "tied" is also in "untied"


def test_tied_parameters_counted_once(tiny):
    model, _ = fresh(tiny)
    emb = model.get_input_embeddings().weight
    spec = get_method("selective")
    model, report = spec.apply(model, spec.make_config({"head": "tied", "layers": 1}))
    layer = sum(p.numel() for p in model.model.layers[-1].parameters())
    assert report.trainable == layer + emb.numel()  # the shared matrix counted once, not twice
    assert report.total == count_params(model)


def test_boft_block_size_checked_against_width(tiny):
    spec = get_method("boft")
    cfg = spec.make_config({"block_size": 7})
    with pytest.raises(MedtuneError, match="block_size=7"):
        cfg.check(loading.read_model_config(tiny))
    # SmolLM2's width: 576 = 2^6 x 9
    with pytest.raises(MedtuneError, match="576"):
        cfg.check({"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9, "intermediate_size": 1536})


def test_boft_records_butterfly_factor_used(tiny):
    model, _ = fresh(tiny)
    spec = get_method("boft")
    model, report = spec.apply(model, spec.make_config({"block_size": 8, "butterfly_factor": 2}))
    d = report.details
    assert d["butterfly_factor_requested"] == 2
    # what PEFT built, read here from the rotation tensors (factor, blocks, size, size): not the request
    built = {p.shape[0] for n, p in model.named_parameters() if "boft_R" in n}
    assert built and {d["butterfly_factor_used"]} == built
    assert any("butterfly factor" in n for n in report.notes) == (d["butterfly_factor_used"] != 2)


def test_boft_cuda_extension_build_output_stays_off_the_terminal(tiny, capfd, monkeypatch):
    """On a GPU, PEFT builds BOFT's CUDA extension on first use with verbose=True: ninja and nvcc
    wrote ~20 lines of compiler errors (torch 2.11) straight to the process's descriptors, into a
    comparison's progress (seen on an H100). Here a stand-in build writes to both descriptors, from
    Python and from a child process as ninja does, then fails as PEFT's does: none of it reaches the
    terminal, the first error line is kept in the run's details and the note, and the descriptors
    work again afterwards."""
    import os
    import subprocess
    import sys
    import warnings

    from peft.tuners.boft import layer

    def failing_build():
        os.write(1, b"[1/3] nvcc -c fbd_cuda_kernel.cu\n")
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.stderr.write('fbd_cuda_kernel.cu(66): error: no suitable conversion\\n')",
            ],
            check=True,
        )
        os.write(2, b"ninja: build stopped: subcommand failed.\n")
        warnings.warn("Failed to load the CUDA extension: no .so, check if ninja is available.", stacklevel=2)
        return None

    monkeypatch.setattr(layer, "get_fbd_cuda", failing_build)
    model, _ = fresh(tiny)
    spec = get_method("boft")
    _, report = spec.apply(model, spec.make_config({"block_size": 8, "butterfly_factor": 2}))
    print("after the build")
    shown = capfd.readouterr()
    assert "nvcc" not in shown.out + shown.err and "ninja" not in shown.out + shown.err
    assert shown.out == "after the build\n"
    assert report.details["cuda_extension"] is False
    assert report.details["cuda_extension_build_error"] == "fbd_cuda_kernel.cu(66): error: no suitable conversion"
    assert report.details["butterfly_factor_used"] == 1
    assert any("no suitable conversion" in n for n in report.notes)


def test_unknown_method_and_bad_args():
    with pytest.raises(MedtuneError, match="unknown method"):
        get_method("prefix")
    with pytest.raises(MedtuneError, match="unknown key"):
        get_method("lora").make_config({"rank": 4})
    with pytest.raises(MedtuneError, match="r must be"):
        get_method("lora").make_config({"r": 0})


def test_build_output_capture_with_stderr_closed_leaves_stdout_working():
    """`medtune compare ... 2>&-`: with fd 2 closed, os.dup(1) returned 2, so the "saved" stdout
    was the descriptor the capture then redirected, and every later line went to a deleted file."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from medtune.methods.peft_methods import build_output_captured\n"
        "os.close(2)\n"
        "with build_output_captured() as out:\n"
        "    os.write(1, b'inside\\n')\n"
        "print('after', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[-1:] == ["after"], (done.stdout, done.stderr)

import pytest
import transformers as T

from shedder.errors import ShedderError
from shedder.families import supported_model_types
from shedder.removal.catalogue import Component, build_catalogue
from tiny_models import FAMILIES, build

# kinds offered at each layer (group kinds listed once), per family of tests/tiny_models.py
EXPECTED_LAYERS = {
    "mamba": [{"block", "ssm"}] * 3,
    "falcon_mamba": [{"block", "ssm"}] * 3,
    "mamba2": [{"block", "ssm", "ssm_heads"}] * 3,
    "llama": [{"block", "attn", "mlp", "attn_heads", "mlp_channels"}] * 3,
    "bamba": [{"block", "ssm", "ssm_heads", "mlp", "mlp_channels"},
              {"block", "attn", "attn_heads", "mlp", "mlp_channels"},
              {"block", "ssm", "ssm_heads", "mlp", "mlp_channels"}],
    "jamba": [{"block", "ssm", "mlp", "mlp_channels"}, {"block", "attn", "attn_heads", "mlp"}] * 2,
    "granitemoehybrid": [{"block", "ssm", "ssm_heads", "mlp"}, {"block", "attn", "attn_heads", "mlp"},
                         {"block", "ssm", "ssm_heads", "mlp"}],
    "nemotron_h": [{"block", "ssm", "ssm_heads"}, {"attn", "attn_heads"}, {"mlp", "mlp_channels"},
                   {"block", "ssm", "ssm_heads"}, {"mlp"}],
    "falcon_h1": [{"block", "ssm", "ssm_heads", "attn", "attn_heads", "mlp", "mlp_channels"}] * 3,
    "zamba2": [{"block", "ssm", "ssm_heads"}, {"block", "ssm", "ssm_heads", "attn"}] * 2,
}


def test_every_required_family_has_an_adapter():
    required = {"mamba", "mamba2", "falcon_mamba", "zamba2", "bamba", "nemotron_h", "falcon_h1", "jamba",
                "granitemoehybrid", "llama"}
    assert required <= set(supported_model_types())
    assert set(FAMILIES) == required


def test_unknown_architecture_names_the_supported_ones():
    model = T.AutoModelForCausalLM.from_config(T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ShedderError, match="not supported.*mamba2.*zamba2"):
        build_catalogue(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_catalogue_lists_the_expected_kinds_per_layer(family):
    catalogue = build_catalogue(build(family))
    per_layer = [set() for _ in range(catalogue.n_layers)]
    for entry in catalogue:
        per_layer[entry.component.layer].add(entry.component.kind)
        # one query head alone frees nothing under grouped-query attention (groups stay equal)
        assert entry.params > 0 or entry.component.kind == "attn_heads"
    assert per_layer == EXPECTED_LAYERS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_block_frees_the_layers_own_parameters(family):
    model = build(family)
    catalogue = build_catalogue(model)
    layers = model.model.layers if hasattr(model, "model") else model.backbone.layers
    for entry in catalogue:
        if entry.component.kind == "block":
            layer = layers[entry.component.layer]
            own = sum(p.numel() for p in layer.parameters())
            if family == "zamba2" and hasattr(layer, "shared_transformer"):
                slot = [1, 3].index(entry.component.layer)
                own -= sum(p.numel() for p in layer.shared_transformer.parameters())
                own += sum(p.numel() for n, p in layer.shared_transformer.named_parameters()
                           if f"_adapter_list.{slot}." in n)
            assert entry.params == own


def test_mamba2_ssm_parameter_count_by_hand():
    model = build("mamba2")  # hidden 32, d_inner 64, 8 heads, 2 groups x state 8, conv kernel 4, no in_proj bias
    entry = {e.component: e for e in build_catalogue(model)}[Component("ssm", 1)]
    heads, group_state, kernel = 8, 2 * 8, 4
    a_d_dtbias = 3 * heads
    in_proj_rows = (2 * group_state + heads) * 32
    conv = 2 * group_state * (kernel + 1)
    assert entry.params == a_d_dtbias + in_proj_rows + conv


def test_mamba1_ssm_parameter_count_by_hand():
    model = build("mamba")  # d_inner 64, state 8, dt rank 4
    entry = {e.component: e for e in build_catalogue(model)}[Component("ssm", 0)]
    a_log, d = 64 * 8, 64
    x_proj = (4 + 2 * 8) * 64
    dt_proj = 64 * 4 + 64
    assert entry.params == a_log + d + x_proj + dt_proj


def test_zamba2_shared_block_is_never_counted_but_each_layers_adapter_slot_is():
    model = build("zamba2", use_shared_attention_adapter=True)
    catalogue = build_catalogue(model)
    linear = sum(p.numel() for p in model.model.layers[1].linear.parameters())
    for layer, slot in ((1, 0), (3, 1)):
        slot_params = sum(p.numel() for n, p in model.named_parameters() if f"_adapter_list.{slot}." in n)
        assert slot_params > 0
        assert catalogue.params_of(Component("attn", layer)) == linear + slot_params


def test_channel_groups_follow_the_group_size():
    model = build("llama")  # intermediate 64
    assert len(build_catalogue(model).components(["mlp_channels"])) == 3 * 8
    catalogue = build_catalogue(model, channel_group_size=24)  # 24 + 24 + 16
    groups = [e for e in catalogue if e.component.kind == "mlp_channels" and e.component.layer == 0]
    assert [e.params for e in groups] == [24 * 64 + 32 * 24] * 2 + [16 * 64 + 32 * 16]


# --- what a removed set frees, as extraction frees it (hand computations) --------------------------

def test_ssm_heads_behind_a_gated_norm_free_only_their_out_proj_columns():
    catalogue = build_catalogue(build("mamba2"))  # head_dim 8, out_proj 64 -> 32 without bias, gated RMSNorm
    out_columns = 32 * 8
    assert catalogue.params_of(Component("ssm_heads", 1, 3)) == out_columns
    heads = [Component("ssm_heads", 1, h) for h in (0, 5)]
    assert catalogue.params_of(heads) == 2 * out_columns
    ssm = catalogue.params_of(Component("ssm", 1))
    assert catalogue.params_of(heads + [Component("ssm", 1)]) == ssm + 2 * out_columns
    assert catalogue.params_of(heads + [Component("block", 1)]) == catalogue.params_of(Component("block", 1))


def test_ssm_heads_without_a_gated_norm_go_whole_when_the_groups_stay_even():
    # Falcon-H1 without its mixer norm: hidden 32, head_dim 8, conv kernel 4 with bias, no in_proj/out_proj bias
    in_proj_rows = (8 + 8 + 1) * 32  # z, x and dt rows
    conv = 8 * (4 + 1)
    whole = in_proj_rows + conv + 3 + 32 * 8  # + A_log, D, dt_bias + out_proj columns
    catalogue = build_catalogue(build("falcon_h1", mamba_rms_norm=False, mamba_n_groups=2))  # 4 heads per group
    assert catalogue.params_of(Component("ssm_heads", 1, 0)) == 0  # groups of 3 and 4 heads: only silenced
    assert catalogue.params_of([Component("ssm_heads", 1, 0), Component("ssm_heads", 1, 4)]) == 2 * whole
    assert catalogue.params_of([Component("ssm_heads", 1, 0), Component("ssm_heads", 1, 1)]) == 0
    # with the scan gone the heads go whole whatever the groups; their dt row and A/D/dt_bias go with the ssm
    ssm = catalogue.params_of(Component("ssm", 1))
    assert (catalogue.params_of([Component("ssm", 1), Component("ssm_heads", 1, 0)])
            == ssm + whole - 32 - 3)
    single_group = build_catalogue(build("falcon_h1", mamba_rms_norm=False))
    assert single_group.params_of(Component("ssm_heads", 1, 0)) == whole


def test_attention_heads_under_grouped_query_attention():
    catalogue = build_catalogue(build("bamba"))  # layer 1: 4 query heads over 2 key/value heads, head_dim 8
    query = 8 * 32 + 32 * 8  # q_proj rows + o_proj columns
    kv = 2 * 8 * 32  # k_proj and v_proj rows
    heads = lambda *hs: [Component("attn_heads", 1, h) for h in hs]  # noqa: E731
    assert catalogue.params_of(heads(0)) == 0  # its group keeps a silenced slot, as wide as the other
    assert catalogue.params_of(heads(0, 2)) == 2 * query  # one per group: groups stay equal
    assert catalogue.params_of(heads(0, 1)) == 2 * query + kv  # a whole group: its key/value head goes
    assert catalogue.params_of(heads(0, 1, 2)) == 3 * query + kv
    assert catalogue.params_of(heads(0, 1) + [Component("attn", 1)]) == catalogue.params_of(Component("attn", 1))


def test_attention_heads_without_grouping_free_their_key_value_heads():
    catalogue = build_catalogue(build("llama", num_key_value_heads=4))  # head_dim 8, one query head per k/v head
    assert catalogue.params_of(Component("attn_heads", 0, 2)) == (8 * 32 + 32 * 8) + 2 * 8 * 32


def test_params_of_an_unknown_component_is_a_clear_error():
    with pytest.raises(ShedderError, match="not a component"):
        build_catalogue(build("mamba")).params_of([Component("attn", 0)])


def test_the_public_api_resolves():
    import shedder

    for name in shedder.__all__:
        assert getattr(shedder, name) is not None, name
    with pytest.raises(AttributeError):
        shedder.no_such_name  # noqa: B018


def test_no_layer_package_hides_a_public_function():
    """With every module imported, ``shedder.search``, ``shedder.extract`` ... are still what ``__all__`` names."""
    import importlib
    import inspect
    import pkgutil

    import shedder

    for found in pkgutil.walk_packages(shedder.__path__, "shedder."):
        if not found.name.endswith("__main__"):
            importlib.import_module(found.name)
    for name in shedder.__all__:
        assert not inspect.ismodule(getattr(shedder, name)), name

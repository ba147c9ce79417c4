"""Fuzzing at a small scale (`make reliability` runs the same checks at full scale)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.common import throwaway_victim
from reliability.fuzz import check_hostile_images, check_schemathesis, stray_lines
from shared.imaging import ImageError, decode_image
from tests.servers import running_service
from victim_service.app import create_app
from victim_service.settings import VictimSettings


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return throwaway_victim(tmp_path_factory.mktemp("victim") / "v.pt", arch="cnn5")


@pytest.fixture(scope="module")
def service(victim: Path):
    with running_service(VictimSettings(checkpoint=victim, device="cpu", max_images=8)) as url:
        yield url


def test_the_document_states_the_limits_the_service_enforces(victim):
    app = create_app(VictimSettings(checkpoint=victim, max_images=8))
    body = app.openapi()["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    multipart = body["multipart/form-data"]["schema"]["properties"]["images"]
    as_json = body["application/json"]["schema"]["properties"]["images"]
    for images in (multipart, as_json):
        assert (images["minItems"], images["maxItems"]) == (1, 8)
        assert images["items"]["minLength"] >= 1


def test_v2_routes_document_the_refusals_they_answer(victim):
    """Regression: /v2 model routes answered 404 (unknown model) and infer 400/413/415/422/...
    that their document did not list; schemathesis reported six undocumented statuses."""
    paths = create_app(VictimSettings(checkpoint=victim, api_keys=["k"])).openapi()["paths"]
    infer = paths["/v2/models/{name}/versions/{version}/infer"]["post"]["responses"]
    assert {"400", "401", "404", "413", "415", "422", "429"} <= set(infer)
    assert {"401", "404", "503"} <= set(paths["/v2/models/{name}/ready"]["get"]["responses"])
    schema = infer["404"]["content"]["application/json"]["schema"]["$ref"]
    assert schema.endswith("/ProtocolErrorBody")  # /v2 refuses in the protocol's shape
    assert paths["/v2/models/{name}"]["get"]["responses"]["401"]["content"]["application/json"][
        "schema"
    ]["$ref"].endswith("/ProtocolErrorBody")


def test_schemathesis_finds_nothing_with_and_without_keys(service, victim):
    result = check_schemathesis(service, examples=10)
    assert result.ok, result.failures
    # every route, /v2 included (it was left out while its document missed its refusals)
    assert result.figures["operations"] == 14 and result.figures["cases"] >= 20
    settings = VictimSettings(checkpoint=victim, device="cpu", api_keys=["k-123456"])
    with running_service(settings) as url:
        keyed = check_schemathesis(url, examples=5, api_key="k-123456")
    assert keyed.ok, keyed.failures


def test_hostile_images_get_answers_or_clean_refusals(service, victim, capfd):
    result = check_hostile_images(service, victim, cases=150)
    assert result.ok, result.failures
    assert result.figures["5xx"] == 0 and result.figures["good_after"]
    assert result.figures["ok_200"] > 0 and result.figures["refused_4xx"] > 0
    assert result.details["families"]["forged-idat"] > 0
    # the service runs in this process: no library may have printed on stderr
    assert not stray_lines(capfd.readouterr().err)


def test_a_library_writing_the_service_log_fails_the_check(service, victim, tmp_path):
    log = tmp_path / "service.log"
    own = "INFO:     Started server process [7]\nWARNING:  Invalid HTTP request received.\n"
    log.write_text(
        own + "libpng error: Not enough image data\nTraceback (most recent call last):\n"
    )
    result = check_hostile_images(service, victim, cases=5, log=log)
    assert not result.ok and "2 stray lines" in result.failures[0]
    log.write_text(own)
    assert check_hostile_images(service, victim, cases=5, log=log).ok


def test_formats_outside_the_list_are_not_parsed():
    """EPS went to Ghostscript (PostScript from strangers); now only the listed formats open."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    for payload in (eps, b"8BPS\x00\x01" + bytes(40)):
        with pytest.raises(ImageError) as info:
            decode_image(payload)
        assert info.value.kind == "not_an_image"


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "I;16", "1", "CMYK"])
def test_every_colour_mode_decodes_to_rgb_bytes(mode):
    """Grey, alpha, palette, 16-bit, bilevel and CMYK images reach the model as (H, W, 3) uint8,
    the same pixels PIL's own RGB conversion gives (RGB itself is not copied through it)."""
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    decoded = decode_image(buffer.getvalue())
    assert decoded.shape == (5, 7, 3) and decoded.dtype == np.uint8
    assert np.array_equal(decoded, np.asarray(Image.open(buffer).convert("RGB")))

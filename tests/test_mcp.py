"""The Space as an MCP server: a real MCP client (the `mcp` package) against `python app.py`."""

import ast

import pytest
from gradio_client import Client, handle_file

from dataset_scripts.non_xray_images import non_xray_images
from tests.conftest import confidences, data_url, mcp_session, sample_images


def test_the_prediction_tool_is_listed_with_its_threshold_and_caveat(app_url):
    tools = mcp_session(app_url, lambda session: session.list_tools()).tools
    predict = next(tool for tool in tools if tool.name == "predict")
    assert "not for clinical use" in predict.description and "threshold" in predict.description
    assert predict.inputSchema["required"] == ["xray_file"]
    assert "JPEG, PNG or DICOM" in predict.inputSchema["properties"]["xray_file"]["description"]


def test_the_tool_answers_an_xray_as_gradio_client_does(app_url):
    image = sample_images("test", "PNEUMONIA", 1)[0]
    result = mcp_session(app_url, lambda session: session.call_tool(
        "predict", {"xray_file": data_url(image, "image/jpeg")}))
    assert not result.isError
    label, sentence, *_ = ast.literal_eval(result.content[0].text)
    expected, *_ = Client(app_url, verbose=False).predict(handle_file(str(image)), api_name="/predict")
    assert label["label"] == expected["label"]
    assert confidences(label) == pytest.approx(confidences(expected), abs=1e-6)
    assert "decision threshold" in sentence and "not for clinical use" in sentence


def test_a_non_xray_and_a_corrupt_file_get_readable_answers(app_url, tmp_path):
    photo, corrupt = tmp_path / "astronaut.png", tmp_path / "corrupt.jpeg"
    non_xray_images()["skimage_astronaut"].save(photo)
    corrupt.write_bytes(sample_images("test", "NORMAL", 1)[0].read_bytes()[:300])

    async def calls(session):
        return [await session.call_tool("predict", {"xray_file": data_url(path, mime)})
                for path, mime in ((photo, "image/png"), (corrupt, "image/jpeg"))]

    refused, failed = mcp_session(app_url, calls)
    assert not refused.isError and "does not look like a chest X-ray" in refused.content[0].text
    assert failed.isError and "This image file is damaged or incomplete" in failed.content[0].text
    assert "Traceback" not in failed.content[0].text

"""The options of ``POST /predict`` (``top_k``, ``model``, ``threshold``, ``all_classes``): one
validator for the query string (422) and the form fields (400), and one table that documents both."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError

from gateway.api.routes.predict import _form_error, _options, _query_error
from gateway.config import Settings
from gateway.errors import BadRequest
from gateway.main import create_app


def test_valid_options_are_parsed_and_absent_ones_left_out() -> None:
    # given every option, then none
    fields = {"top_k": "3", "model": "person_detector", "threshold": "0.25", "all_classes": "TRUE", "other": "x"}
    # then each is typed, and a field the route does not know is ignored
    assert _options(fields, _query_error) == {
        "top_k": 3,
        "model": "person_detector",
        "threshold": 0.25,
        "all_classes": True,
    }
    assert _options({}, _form_error) == {}


@pytest.mark.parametrize(
    ("name", "raw"),
    [("top_k", "0"), ("top_k", "101"), ("top_k", ""), ("top_k", "\u0663"), ("top_k", "2.0"),
     ("model", ""), ("model", "a/b"), ("model", "x" * 129),
     ("threshold", "1.5"), ("threshold", "-0.1"), ("threshold", "nan"), ("threshold", "half"),
     ("all_classes", "maybe"), ("all_classes", "")],
)  # fmt: skip
def test_a_bad_option_is_422_in_the_query_and_400_in_the_form(name: str, raw: str) -> None:
    # when the query string carries it, then FastAPI's 422 names the query parameter
    with pytest.raises(RequestValidationError) as query:
        _options({name: raw}, _query_error)
    (error,) = query.value.errors()
    assert error["loc"] == ("query", name) and name in error["msg"], f"the 422 should name {name}: {error}"
    # when the form carries it, then it is a 400 that names the field
    with pytest.raises(BadRequest) as form:
        _options({name: raw}, _form_error)
    assert name in form.value.message and repr(raw) in form.value.message, form.value.message


def test_the_query_parameters_are_documented_with_the_form_fields_ranges() -> None:
    # given the OpenAPI document of the app
    op = create_app(Settings()).openapi()["paths"]["/predict"]["post"]
    params = {p["name"]: p for p in op["parameters"]}
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    # then each option is an optional query parameter with the same schema as its form field
    assert set(params) == {"top_k", "model", "threshold", "all_classes"}, f"query parameters: {sorted(params)}"
    for name, param in params.items():
        assert param["in"] == "query" and param["required"] is False and param["description"], param
        expected = {k: v for k, v in form[name].items() if k != "description"}
        assert param["schema"] == expected, f"{name}: query {param['schema']} vs form {expected}"

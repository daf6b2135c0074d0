"""The pages (issue 16): ``/`` (the demo) and ``/docs`` (Swagger UI), served offline, open with API keys on.

What the pages do in a browser is tests/test_browser.py's; this file checks, in process, what
the service sends: the policy, that every asset is its own, and that the files ship in the package.
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import pytest
from serving import PROJECT_ROOT

from nli_service.api import docs

API_PACKAGE = PROJECT_ROOT / "nli_service" / "api"


class _Assets(HTMLParser):
    """The URLs a page loads (scripts, stylesheets, icons), and whether it has inline code or style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self._in_script = True
            if attributes.get("src"):
                self.urls.append(attributes["src"] or "")
        if tag == "link" and attributes.get("href"):
            self.urls.append(attributes["href"] or "")
        if tag == "style" or "style" in attributes or any(name.startswith("on") for name in attributes):
            self.inline.append(self.get_starttag_text() or tag)

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data.strip()[:80])


def _assets(html: str) -> _Assets:
    parser = _Assets()
    parser.feed(html)
    return parser


@pytest.mark.parametrize(("path", "policy"), [("/", "default-src 'self'"), ("/docs", docs.CONTENT_SECURITY_POLICY)])
def test_each_page_is_html_with_its_policy_no_inline_code_and_only_its_own_assets(client, path, policy) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == policy
    page = _assets(response.get_data(as_text=True))
    assert page.inline == []
    assert page.urls, "the page loads its scripts and styles from files"
    for url in page.urls:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not served by the service"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content_length and asset.content_length > 0, url


def test_docs_serves_a_swagger_ui_that_reads_openapi_3_1_over_this_services_document(client) -> None:
    html = client.get("/docs").get_data(as_text=True)
    assert 'data-spec-url="/openapi.json"' in html
    version = (docs.SWAGGER_UI_DIST / "VERSION").read_text().strip()
    assert int(version.lstrip("v").split(".")[0]) >= 5, f"Swagger UI {version} cannot render OpenAPI 3.1"
    assert client.get("/openapi.json").get_json()["openapi"].startswith("3.1")


def test_with_api_keys_on_the_pages_and_their_assets_stay_open_and_the_api_does_not(make_app, tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alice:alice-5f0c2d8e9b1a4c7d\n")
    client = make_app(NLI_API_KEYS_FILE=keys).test_client()
    for path in ("/", "/docs"):
        response = client.get(path)
        assert response.status_code == 200, path
        for url in _assets(response.get_data(as_text=True)).urls:
            assert client.get(url).status_code == 200, url
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/model").status_code == 401
    assert client.post("/predict", json={"premise": "a", "hypothesis": "b"}).status_code == 401


def test_the_page_keeps_an_api_key_in_memory_only() -> None:
    lines = (API_PACKAGE / "static" / "demo.js").read_text().splitlines()
    script = "\n".join(line for line in lines if not line.lstrip().startswith("//"))
    for storage in ("localStorage", "sessionStorage", "document.cookie", "indexedDB"):
        assert storage not in script
    assert re.search(r"Authorization = `Bearer \$\{apiKey\}`", script)


def test_the_package_ships_every_page_file() -> None:
    """``pip install .`` must carry the templates and static files: pyproject's package-data covers them."""
    globs = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = globs["nli_service.api"]
    files = [path for folder in ("static", "templates") for path in (API_PACKAGE / folder).rglob("*") if path.is_file()]
    assert len(files) >= 6
    for path in files:
        relative = str(Path(path).relative_to(API_PACKAGE))
        assert any(fnmatch(relative, pattern) for pattern in patterns), f"{relative} would not be installed"

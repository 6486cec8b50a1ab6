"""The mitmproxy inspect addon: WBXML bodies as XML through mitmproxy's own view machinery, flow labels, fuzzing.

mitmproxy lives in .venv-inspect only (``make test-inspect``, which ``make test`` runs); in the main .venv this
module is skipped as a whole. By hand: ``.venv-inspect/bin/python -m pytest --noconftest tests/test_eas_inspect.py``
(tests/conftest.py pulls in the whole suite's back-end fixtures, which .venv-inspect does not install).
"""

from __future__ import annotations

import asyncio
import gzip
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mitmproxy")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from mitmproxy import contentviews, io  # noqa: E402
from mitmproxy.test import taddons, tflow  # noqa: E402

from gateway.activesync import inspect_addon  # noqa: E402
from gateway.activesync.inspect_addon import (METADATA_KEY, MULTIPART_TYPE, VIEW_NAME, WBXML_TYPE,  # noqa: E402
                                              EasInspector, EasSummary, InspectError, render_body,
                                              split_multipart, summarize_request, top_status)
from gateway.activesync.request import EasRequest, encode_base64_query  # noqa: E402
from gateway.activesync.wbxml import Element, encode  # noqa: E402

ADDON_PATH = Path(inspect_addon.__file__)
PLAIN_QUERY = "Cmd=Sync&User=alice&DeviceId=Phone1&DeviceType=iPhone"


def E(ns: str, name: str, *children: Element, text: str | None = None, opaque: bytes | None = None) -> Element:
    return Element(ns, name, list(children), text, opaque)


SYNC_RESPONSE = encode(E("AirSync", "Sync", E("AirSync", "Collections", E(
    "AirSync", "Collection",
    E("AirSync", "SyncKey", text="2"), E("AirSync", "CollectionId", text="5"), E("AirSync", "Status", text="1"),
    E("AirSync", "Commands", E("AirSync", "Add", E("AirSync", "ServerId", text="5:17"), E(
        "AirSync", "ApplicationData", E("Email", "Subject", text="Lunch <today>"),
        E("AirSyncBase", "Body", E("AirSyncBase", "Type", text="1"), E("AirSyncBase", "Data", text="hi")))))))))
FOLDERSYNC_RESPONSE = encode(E("FolderHierarchy", "FolderSync", E("FolderHierarchy", "Status", text="1"),
                               E("FolderHierarchy", "SyncKey", text="1")))
PROVISION_REFUSED = encode(E("Provision", "Provision", E("Provision", "Status", text="2")))
ITEMOPS_RESPONSE = encode(E("ItemOperations", "ItemOperations", E("ItemOperations", "Status", text="1"),
                            E("ItemOperations", "Response", E("ItemOperations", "Fetch",
                                                              E("ItemOperations", "Status", text="1")))))


def multipart(*parts: bytes) -> bytes:
    """PartsCount, (offset, length) per part, then the parts; 32-bit little-endian, as casgate writes them."""
    offset, table = 4 + 8 * len(parts), b""
    for part in parts:
        table += struct.pack("<ii", offset, len(part))
        offset += len(part)
    return struct.pack("<i", len(parts)) + table + b"".join(parts)


def eas_flow(query: str = PLAIN_QUERY, response: bytes | None = SYNC_RESPONSE, *, version: str | None = "14.1",
             response_type: str = WBXML_TYPE, status_code: int = 200):
    flow = tflow.tflow(resp=True)
    flow.request.method = "POST"
    flow.request.path = f"/Microsoft-Server-ActiveSync?{query}"
    flow.request.headers["content-type"] = WBXML_TYPE
    if version:
        flow.request.headers["MS-ASProtocolVersion"] = version
    flow.request.content = encode(E("AirSync", "Sync"))
    flow.response.status_code = status_code
    flow.response.headers["content-type"] = response_type
    flow.response.content = response or b""
    return flow


@pytest.fixture
def tctx():
    """The addon loaded into a mitmproxy test master; its view is taken back afterwards."""
    addon = EasInspector()
    with taddons.context(addon) as context:
        context.addon = addon
        yield context
    addon.done()


def shown(message, flow, view: str = "auto") -> tuple[str, str]:
    """(title, text) of a message as mitmproxy itself would show it, through either contentview API."""
    if hasattr(contentviews, "prettify_message"):  # mitmproxy 12 and later
        result = contentviews.prettify_message(message, flow, view)
        return f"{result.view_name} {result.description}", result.text
    description, lines, error = contentviews.get_message_content_view(view, message, flow)
    assert error is None, error  # the view itself never raised
    return description, "\n".join("".join(text for _, text in line) for line in lines)


# --- the content view, through mitmproxy --------------------------------------------------------------

def test_sync_response_renders_as_our_xml(tctx):
    flow = eas_flow()
    title, text = shown(flow.response, flow)
    assert VIEW_NAME in title  # chosen ahead of mitmproxy's own WBXML view
    assert '<Sync xmlns="AirSync"' in text
    assert 'xmlns:email="Email"' in text and "<email:Subject>Lunch &lt;today&gt;</email:Subject>" in text
    assert "<airsyncbase:Data>hi</airsyncbase:Data>" in text and "<ServerId>5:17</ServerId>" in text


def test_request_body_renders_too(tctx):
    flow = eas_flow()
    _, text = shown(flow.request, flow)
    assert text.splitlines()[1] == '<Sync xmlns="AirSync"/>'


def test_gzip_encoded_body_renders(tctx):
    flow = eas_flow()
    flow.response.headers["content-encoding"] = "gzip"
    flow.response.raw_content = gzip.compress(SYNC_RESPONSE)
    assert flow.response.raw_content[:2] == b"\x1f\x8b"
    title, text = shown(flow.response, flow)
    assert "gzip" in title and '<Sync xmlns="AirSync"' in text


def test_garbage_renders_an_error_line_and_does_not_raise(tctx):
    flow = eas_flow(response=b"\x03\x01\x6a\x00\x45\x5c\xff garbage")
    title, text = shown(flow.response, flow)
    assert VIEW_NAME in title
    assert text.splitlines()[0].startswith("not ActiveSync WBXML: at byte")
    assert "0000000000  03 01 6a 00 45 5c ff" in text  # the hex dump of the start


def test_garbage_chosen_explicitly_still_renders(tctx):
    flow = eas_flow(response=b"<html>not wbxml</html>", response_type="text/html")
    _, text = shown(flow.response, flow, VIEW_NAME)
    assert "WBXML version byte 0x3c" in text


def test_multipart_shows_parts_table_and_wbxml_part(tctx):
    flow = eas_flow(response=multipart(ITEMOPS_RESPONSE, b"%PDF-1.4 attachment"), response_type=MULTIPART_TYPE)
    title, text = shown(flow.response, flow)
    lines = text.splitlines()
    assert VIEW_NAME in title and lines[0].startswith("2 parts;")
    assert lines[1].split() == ["part", "offset", "length"]
    assert lines[2].split() == ["0", "20", str(len(ITEMOPS_RESPONSE))]
    assert lines[3].split() == ["1", str(20 + len(ITEMOPS_RESPONSE)), "19"]
    assert '<ItemOperations xmlns="ItemOperations">' in text


def test_opaque_option_shortens_blobs(tctx):
    flow = eas_flow(response=encode(E("ItemOperations", "ItemOperations", E("ItemOperations", "Response", E(
        "ItemOperations", "Fetch", E("ItemOperations", "Properties", E("ItemOperations", "Data", opaque=b"x" * 40)))))))
    assert 'wbxml:opaque="base64">eHh4' in shown(flow.response, flow)[1]
    tctx.configure(tctx.addon, eas_max_opaque_shown=10)
    assert 'wbxml:opaque="omitted" wbxml:length="40"' in shown(flow.response, flow)[1]
    tctx.configure(tctx.addon, eas_max_opaque_shown=-1)
    assert tctx.addon.view.max_opaque_shown is None


# --- flow labels ----------------------------------------------------------------------------------------

def run_hooks(tctx, flow):
    tctx.addon.request(flow)
    tctx.addon.response(flow)
    return flow


def test_hooks_annotate_command_version_and_status(tctx):
    flow = eas_flow(query=PLAIN_QUERY.replace("Sync", "FolderSync"), response=FOLDERSYNC_RESPONSE)
    tctx.addon.request(flow)
    assert flow.comment == "EAS FolderSync v14.1"
    tctx.addon.response(flow)
    assert flow.comment == "EAS FolderSync v14.1 Status 1"
    meta = flow.metadata[METADATA_KEY]
    assert (meta["command"], meta["version"], meta["status"], meta["http_status"]) == ("FolderSync", "14.1", "1", 200)


def test_base64_query_is_recognised(tctx):
    query = encode_base64_query(EasRequest(command="Provision", user="", device_id="Phone1", device_type="iPhone",
                                           version="16.1", policy_key=None, locale=0x0409))
    assert "=" not in query.rstrip("=") and "Cmd" not in query
    flow = run_hooks(tctx, eas_flow(query=query, response=PROVISION_REFUSED, version=None))
    assert flow.comment == "EAS Provision v16.1 Status 2"
    assert flow.metadata[METADATA_KEY]["command"] == "Provision"


def test_gzip_multipart_and_http_errors_in_the_label(tctx):
    flow = eas_flow(response=multipart(ITEMOPS_RESPONSE, b"data"), response_type=MULTIPART_TYPE)
    flow.response.headers["content-encoding"] = "gzip"
    flow.response.raw_content = gzip.compress(flow.response.raw_content)
    assert run_hooks(tctx, flow).comment == "EAS Sync v14.1 Status 1"
    assert run_hooks(tctx, eas_flow(response=None, status_code=449)).comment == "EAS Sync v14.1 HTTP 449"
    assert run_hooks(tctx, eas_flow(response=None)).metadata[METADATA_KEY]["status"] is None


def test_bad_request_line_and_bad_body_are_labelled_not_raised(tctx):
    flow = run_hooks(tctx, eas_flow(query="Cmd=Sync&DeviceId=x", response=b"\x03\x01\x6a\x00\x01"))
    assert flow.comment.startswith("EAS ? (")
    assert "DeviceType is missing" in flow.comment
    assert "response is not ActiveSync WBXML: at byte 4: END without an open element" in flow.comment
    assert flow.metadata[METADATA_KEY]["command"] is None


def test_options_and_other_hosts(tctx):
    flow = eas_flow(query="", response=None)
    flow.request.method = "OPTIONS"
    assert run_hooks(tctx, flow).comment == "EAS OPTIONS v14.1"
    other = tflow.tflow(resp=True)
    assert run_hooks(tctx, other).comment == "" and METADATA_KEY not in other.metadata


def test_a_users_comment_is_kept(tctx):
    flow = eas_flow()
    flow.comment = "look at this one"
    run_hooks(tctx, flow)
    assert flow.comment == "look at this one" and flow.metadata[METADATA_KEY]["command"] == "Sync"


def test_full_event_cycle_through_the_addon_manager(tctx):
    flow = eas_flow(response=FOLDERSYNC_RESPONSE)
    asyncio.run(tctx.cycle(tctx.addon, flow))  # every hook of a flow's life, as mitmproxy sends them
    assert flow.comment == "EAS Sync v14.1 Status 1"


# --- loading as a script --------------------------------------------------------------------------------

def registered(name: str):
    registry = getattr(contentviews, "registry", None)  # mitmproxy 12 and later
    return registry.get(name.lower()) if registry is not None else contentviews.get(name)


def test_loads_as_a_mitmproxy_script():
    with taddons.context() as context:
        module = context.script(str(ADDON_PATH))  # what -s does: the file run outside the package
        [addon] = module.addons
        try:
            assert type(addon).__name__ == "EasInspector"
            assert registered(VIEW_NAME) is addon.view
        finally:
            addon.done()


def test_mitmdump_s_renders_and_labels_saved_flows(tmp_path):
    """The real command line: mitmdump -s reads saved flows, runs the hooks, prints the view, writes the labels."""
    source, out = tmp_path / "in.flows", tmp_path / "out.flows"
    with source.open("wb") as f:
        io.FlowWriter(f).add(eas_flow(response=FOLDERSYNC_RESPONSE))
    run = subprocess.run([sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()",
                          "-n", "-r", str(source), "-w", str(out), "-s", str(ADDON_PATH),
                          "--set", "flow_detail=3"], check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert '<FolderSync xmlns="FolderHierarchy">' in run.stdout
    with out.open("rb") as f:
        [flow] = list(io.FlowReader(f).stream())
    assert flow.comment == "EAS Sync v14.1 Status 1"


# --- the pure parts, and fuzzing ------------------------------------------------------------------------

def test_split_multipart_refusals():
    assert split_multipart(multipart(b"ab", b"")) == [(20, 2), (22, 0)]
    for data, message in [(b"\x01\x00", "shorter than its 4-byte PartsCount"),
                          (struct.pack("<i", 0), "PartsCount is 0"),
                          (struct.pack("<i", -1), "PartsCount is -1"),
                          (struct.pack("<i", 3) + b"\x00" * 8, "needs a 24-byte part table"),
                          (struct.pack("<iii", 1, 12, 1), "part 0 (offset 12, length 1) lies outside"),
                          (struct.pack("<iii", 1, 4, 0), "part 0 (offset 4, length 0) lies outside"),
                          (struct.pack("<iii", 1, 12, -1), "lies outside")]:
        with pytest.raises(InspectError, match=message.replace("(", r"\(").replace(")", r"\)")):
            split_multipart(data)


def test_top_status_and_summary_line():
    assert top_status(FOLDERSYNC_RESPONSE, WBXML_TYPE) == "1"
    assert top_status(SYNC_RESPONSE, WBXML_TYPE) is None  # the Status there belongs to a Collection
    assert top_status(FOLDERSYNC_RESPONSE, "text/plain") is None
    assert top_status(encode(E("Ping", "Ping", E("Ping", "Status"))), WBXML_TYPE) == ""
    with pytest.raises(InspectError, match="not ActiveSync WBXML"):
        top_status(b"\x02", WBXML_TYPE)
    assert EasSummary("Ping", "14.0", status="", http_status=500, problem="odd").line() == \
        "EAS Ping v14.0 Status (empty) HTTP 500 (odd)"
    assert summarize_request("", {}, "GET").problem.startswith("method 'GET'")


def test_empty_body_view():
    rendering = render_body(b"", WBXML_TYPE)
    assert rendering.text == "(empty body)" and rendering.error is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([WBXML_TYPE, MULTIPART_TYPE, None]))
def test_any_body_renders_without_raising(data, content_type):
    rendering = render_body(data, content_type, max_opaque_shown=8)
    assert rendering.lines and all(style in ("text", "error", "highlight") for style, _ in rendering.lines)
    assert (rendering.error is None) == ("malformed" not in rendering.description)
    try:
        top_status(data, content_type)
    except InspectError:
        pass  # the only error it may raise


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4), st.integers(0, 3), st.binary(max_size=8))
def test_multipart_parts_fuzzed(parts, cut, tail):
    data = multipart(*parts)
    assert [data[o:o + n] for o, n in split_multipart(data)] == parts
    broken = data[:len(data) - cut] + (tail if cut else b"")
    try:
        split_multipart(broken)
    except InspectError:
        pass
    render_body(broken, MULTIPART_TYPE)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.dictionaries(st.sampled_from(["MS-ASProtocolVersion", "X-MS-PolicyKey",
                                                              "MS-ASAcceptMultiPart", "Other"]),
                                             st.text(max_size=12), max_size=3),
       st.sampled_from(["POST", "OPTIONS", "GET"]))
def test_any_request_line_summarizes_without_raising(query, headers, method):
    summary = summarize_request(query, headers, method)
    assert (summary.command is None) == (summary.problem is not None)
    assert summary.line().startswith("EAS ")

"""The HTML report: escaping, completeness, unknowns, verdict, self-containment.

The output is read back with the standard library's HTML parser, so assertions are about what
a browser would see (tags, attributes, text), not about substrings of markup.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
import report_cases
from report_cases import DIGEST_A, HOSTILE, LLAMA_URL

from audit.errors import InputError
from audit.report import render_audit_html

FINGERPRINT = "SHA256:Qm9vZm9vZm9vZm9vZm9vZm9vZm9vZm9vZm9vZm9vZm8"

# every element the report may contain; anything else (script, img, iframe, link, object ...) fails
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "footer", "section", "article", "figure",
    "figcaption", "h1", "h2", "h3", "p", "strong", "span", "code", "pre", "br", "wbr", "ul", "li", "q",
    "blockquote", "a", "table", "thead", "tbody", "tr", "th", "td",
    "svg", "rect", "line", "path", "text",
}


class Page(HTMLParser):
    """Tags, attributes and the body's visible text of a page; <style> text kept apart."""

    GLUE = "\x00"    # a <wbr> joins the text on either side

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.chunks: list[str] = []
        self.styles: list[str] = []
        self._in_style = self._in_head = False
        self.feed(html)
        self.close()
        self.text = re.sub(rf"\s*{self.GLUE}\s*", "", " ".join(" ".join(self.chunks).split()))

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"
        self._in_head = self._in_head or tag == "head"
        if tag == "wbr":
            self.chunks.append(self.GLUE)

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        self._in_style = False
        self._in_head = self._in_head and tag != "head"

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)
        elif not self._in_head:
            self.chunks.append(data)


def render(predicate, **kwargs) -> str:
    kwargs.setdefault("signer_fingerprint", FINGERPRINT)
    return render_audit_html(predicate, **kwargs)


def rows(html: str) -> dict[str, str]:
    """Two-column table rows as {header: cell text}."""
    found = {}
    for match in re.finditer(r'<tr><th scope="row">(.*?)</th><td[^>]*>(.*?)</td></tr>', html, re.S):
        found[Page(match[1]).text] = Page(match[2]).text
    return found


# --- escaping ------------------------------------------------------------------------------

@pytest.fixture
def hostile_html(hostile_case) -> str:
    return render(hostile_case, signer_fingerprint=HOSTILE["fingerprint"],
                  verification={"ok": False, "reason": HOSTILE["reason"]})


def test_no_script_and_no_unexpected_element(hostile_html):
    page = Page(hostile_html)
    assert "<script" not in hostile_html.lower()
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS
    assert [name for _, attrs in page.tags for name in attrs if name.startswith("on")] == []
    assert "onerror=" not in re.sub(r"&[^;]+;", "", hostile_html.replace("&lt;img src=x onerror=", ""))


def test_hostile_strings_are_shown_as_text(hostile_html):
    page = Page(hostile_html)
    for key in ("student", "purpose", "quote", "plan_name", "regime", "obligation", "input", "assumption",
                "reason", "fingerprint", "label"):
        assert HOSTILE[key] in page.text, key
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile_html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in hostile_html
    assert "6170" not in hostile_html   # {{ 1234*5 }} is data, never evaluated


def test_the_style_element_cannot_be_closed_early(hostile_html):
    page = Page(hostile_html)
    assert [tag for tag, _ in page.tags].count("style") == 1
    assert "alert" not in "".join(page.styles)
    assert "@page" in "".join(page.styles)


def test_only_http_citation_links_and_no_resource_loads(hostile_html, many_regimes_case):
    for html in (hostile_html, render(many_regimes_case)):
        page = Page(html)
        for tag, attrs in page.tags:
            for name, value in attrs.items():
                if value and re.search(r"(https?|javascript|data):", value, re.I):
                    assert (tag, name) == ("a", "href") and value.startswith(("http://", "https://")), (tag, name, value)
            assert not ({"src", "srcset", "poster", "xlink:href", "action", "background"} & set(attrs))
        assert "url(" not in html and "@import" not in html
    hrefs = [attrs["href"] for tag, attrs in Page(render(many_regimes_case)).tags if tag == "a"]
    assert LLAMA_URL in hrefs
    teacher_section = re.search(r'<section id="teacher-terms">.*?</section>', hostile_html, re.S)[0]
    assert "<a " not in teacher_section                     # the javascript: URL is not a link ...
    assert HOSTILE["url"] in Page(teacher_section).text     # ... but is still shown


def test_content_security_policy_forbids_loading_anything(review_case):
    page = Page(render(review_case))
    policy = [attrs["content"] for tag, attrs in page.tags
              if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert policy and "default-src 'none'" in policy[0] and "script-src" not in policy[0]


def test_chart_in_the_page_is_well_formed_svg(hostile_html):
    svg = re.search(r"<svg.*?</svg>", hostile_html, re.S)[0]
    root = ET.fromstring(svg)
    assert any(HOSTILE["label"] in (t.text or "") for t in root.iter("text"))


# --- completeness --------------------------------------------------------------------------

def test_every_regime_finding_obligation_and_input_appears(all_cases):
    for name, predicate in all_cases.items():
        text = Page(render(predicate)).text
        decision = predicate["decision"]
        for regime in decision["regimes"]:
            assert regime["name"] in text and regime["id"] in text, (name, regime["id"])
        for finding in decision["findings"]:
            assert finding["rule_id"] in text and finding["explanation"] in text, (name, finding["rule_id"])
            if finding["citation"]:
                assert finding["citation"]["quote"] in text
        for obligation in decision["obligations"]:
            assert obligation["id"] in text and obligation["text"] in text, (name, obligation["id"])
        for item in predicate["inputs"]:
            assert item["name"] in text and item["sha256"] in text and item["role"] in text, (name, item)
        for pack in decision["packs"]:
            assert pack["id"] in text and pack["sha256"] in text


def test_unknown_values_read_unknown_never_none(unknown_case):
    html = render(unknown_case)
    text = Page(html).text
    assert not re.search(r"\bNone\b|\bnan\b", text)
    table = rows(html)
    assert table["Cumulative training compute"] == "unknown"
    assert table["Cumulative compute"] == "unknown"
    assert table["Uncertainty band"] == "unknown"
    assert table["Cost"] == "unknown"
    assert table["Dense peak per accelerator"] == "unknown"
    assert table["Within ±30%?"] == "unknown"
    assert "teacher.parameters" in table["Facts missing from the plan"]
    assert "Cumulative compute: unknown" in text   # the chart says it too


def test_no_none_anywhere_in_any_case(all_cases):
    for predicate in all_cases.values():
        assert not re.search(r"\bNone\b", Page(render(predicate)).text)


# --- figures -------------------------------------------------------------------------------

def test_compute_figures(review_case):
    table = rows(render(review_case))
    # 8.5e9 FLOP/token x 2e10 tokens + 1.47e11 x 2e10 = 1.7e20 + 2.94e21 = 3.11e21
    assert table["Cumulative compute"] == "3.1e21 FLOP 3,110,000,000,000,000,000,000"
    # 6 x 1.236e9 x 2e10 = 1.4832e20
    assert table["6·N·D (6 × active student parameters × tokens)"] == "1.5e20 FLOP 148,320,000,000,000,000,000"
    # 64 x 120 h x 3600 s x 9.89e14 FLOP/s x 0.4 = 1.09375488e22; / 3.11e21 = 3.517
    assert table["count × hours × peak × utilisation"].startswith("1.1e22 FLOP 10,937,548,800,000,000,000,000")
    assert table["Ratio (hardware ÷ count)"] == "3.5×"
    assert table["Within ±30%?"].startswith("No")
    assert table["Cost"] == "$19,200"   # 64 x 120 x $2.50
    assert table["Uncertainty band"] == "2.8e21 – 3.4e21 FLOP"
    assert table["Coverage of the FLOP count"].startswith("98%")


def test_an_adapter_and_a_logit_cache_are_shown_when_the_audit_has_them(review_case):
    assert "Trained adapter (the student's weights frozen)" not in rows(render(review_case))   # older audits: no key
    review_case["compute"]["adapter"] = {"kind": "lora", "rank": 16, "target_modules": ["q_proj", "v_proj"],
                                         "trainable_params": 6.8e6, "frozen_params": 8.0e9,
                                         "train_flops_per_token": 3.3e10, "failure": None}
    review_case["compute"]["logit_cache"] = {"top_k": 64, "dtype": "float16", "bytes_per_token": 388,
                                             "tokens": 2e10, "total_bytes": 7.76e12}
    table = rows(render(review_case))
    assert table["Trained adapter (the student's weights frozen)"].startswith("LORA rank 16 on q_proj, v_proj: 6.8e6 "
                                                                              "trainable")
    assert table["Cached teacher logits"] == "top-64 float16: 388 bytes per token, 7.8e12 bytes for 2.0e10 tokens"


def test_a_near_miss_shows_its_side_and_a_dollar_test_its_dollars(review_case):
    """1.03e23 against > 1e23 read "1.0e23" and "1×" beside "exceeds"; New York's dollar test
    read "no threshold" and "unknown" beside a ratio and "below the threshold"."""
    regimes = review_case["decision"]["regimes"]
    gpai = next(r for r in regimes if r["id"] == "eu-ai-act.gpai")
    gpai.update(observed_value=1.03e23, observed_flops=1.03e23, margin_ratio=1.03, status="exceeds")
    raise_row = next(r for r in regimes if r["id"] == "us-ny.raise.frontier")
    raise_row.update(in_force=True, status="below", unit="USD", fact="cost_usd", threshold_flops=None,
                     observed_flops=None, threshold_value=1e8, observed_value=3.8e5, margin_ratio=3.8e-3)
    html = render(review_case)
    rows = {r["id"]: Page(body).text for body in re.findall(r'<tbody class="regime">(.*?)</tbody>', html, re.S)
            for r in regimes if r["id"] in body}
    assert "1.03e23 FLOP" in rows["eu-ai-act.gpai"] and "+3.0%" in rows["eu-ai-act.gpai"]
    ny = rows["us-ny.raise.frontier"]
    assert "> $100,000,000" in ny and "$380,000" in ny and "3.8e-3×" in ny
    assert "no threshold" not in ny and "unknown" not in ny


def test_regime_rows(review_case, many_regimes_case):
    def regime_row(html, regime_id):
        for body in re.findall(r'<tbody class="regime">(.*?)</tbody>', html, re.S):
            if regime_id in body:
                return Page(body).text
        raise AssertionError(regime_id)

    html = render(review_case)
    gpai = regime_row(html, "eu-ai-act.gpai")
    # GPAI compares the parameter-update figure: student training 1.7e20; / 1e23 = 0.0017
    for part in ("EU GPAI", "· EU", "yes", "> 1e23 FLOP", "1.7e20", "1.7e-3×", "compute for parameter updates",
                 "below the threshold",
                 "Begin the student's name with “Llama”", "deadline: before release", "unmet"):
        assert part in gpai, part
    raise_row = regime_row(html, "us-ny.raise.frontier")
    assert " no " in f" {raise_row} " and "not in force" in raise_row

    html = render(many_regimes_case)
    systemic = regime_row(html, "eu-ai-act.systemic-risk")
    # 3.8e25 + 1.2e25 + 8e24 = 5.8e25; / 1e25 = 5.8
    for part in ("≥ 1e25 FLOP", "5.8e25", "5.8×", "exceeds the threshold", "Notify the European Commission",
                 "within 2 weeks of meeting the threshold", "to do"):
        assert part in systemic, part
    modification = regime_row(html, "eu-ai-act.modification")
    # one third of 3.8e25 = 1.27e25; this run 1.2e25 + 8e24 = 2.0e25; 2.0e25 / 1.267e25 = 1.58
    assert "> 1.27e25 FLOP" in modification and "2.0e25" in modification and "1.6×" in modification


def test_obligations_checklist(many_regimes_case):
    html = render(many_regimes_case)
    checklist = Page(re.search(r'<table class="checklist">.*?</table>', html, re.S)[0]).text
    assert "☐ to do Notify the European Commission" in checklist
    assert "☐ to do Draw up technical documentation" in checklist and "2027-08-02" in checklist
    assert "☑ met Put in place a copyright policy" in checklist
    assert "provider's written authorisation" in checklist
    assert "none fixed" in checklist


def test_teacher_terms_quote_link_date_and_evidence(review_case):
    html = render(review_case)
    section = re.search(r'<section id="teacher-terms">.*?</section>', html, re.S)[0]
    quote = re.search(r"<blockquote>(.*?)</blockquote>", section, re.S)
    assert Page(quote[1]).text == "you shall also include “Llama” at the beginning of any such AI model name"
    assert f'href="{LLAMA_URL}"' in section
    text = Page(section).text
    assert "2024-07-23" in text and "evidence: primary" in text and "teacher.llama31.naming" in text


# --- verdict, gate, signature --------------------------------------------------------------

@pytest.mark.parametrize("case, verdict, gate", [
    ("review", "Review required before training: 1 unmet obligation", "stays closed"),
    ("deny", "Training denied: 1 blocking finding", "stays closed"),
    ("unknown", "Review required before training: 1 finding to review", "stays closed"),
    ("many_regimes", "Allowed with obligations: 2 obligations to fulfil", "would open"),
])
def test_verdict_comes_first_in_words(all_cases, case, verdict, gate):
    html = render(all_cases[case])
    text = Page(html).text
    assert verdict in text and f"The training gate {gate}" in text
    assert text.index(verdict) < text.index("Compute against the thresholds") < text.index("Legal regimes")


def test_the_banner_says_why(deny_case, review_case, many_regimes_case):
    def banner(predicate):
        html = render(predicate)
        return Page(re.search(r'<section class="banner verdict-[a-z]+" id="verdict">.*?</section>', html, re.S)[0]).text

    assert "Blocking: The provider's terms forbid training competing models on its outputs." in banner(deny_case)
    assert "Unmet obligation: Begin the student's name with “Llama”" in banner(review_case)
    assert "Show “Built with Llama”" not in banner(review_case)          # met: not a reason
    many = banner(many_regimes_case)
    assert "To fulfil: Notify the European Commission (deadline: within 2 weeks of meeting the threshold)" in many
    assert "To fulfil: Draw up technical documentation (deadline: 2027-08-02)" in many


def test_an_unknown_outcome_or_a_contradiction_is_flagged(review_case):
    strange = {**review_case, "outcome": "MAYBE", "gate_open": True}
    text = Page(render(strange)).text
    assert "Unrecognised outcome 'MAYBE': treat as not allowed" in text
    assert "Inconsistent attestation" in text and "The training gate stays closed" in text
    contradiction = Page(render({**review_case, "gate_open": True})).text
    assert "the gate opens, but the outcome is REVIEW" in contradiction
    assert "The training gate stays closed" in contradiction and "would open" not in contradiction
    allowed_but_shut = Page(render({**review_case, "outcome": "ALLOW", "gate_open": False})).text
    assert "The training gate stays closed" in allowed_but_shut


def test_failed_verification_opens_the_page(review_case):
    text = Page(render(review_case, verification={"ok": False, "reason": "signature does not match"})).text
    assert text.startswith("Warning: the signature of this audit did NOT verify.")
    assert "Reason: signature does not match" in text
    ok = Page(render(review_case, verification={"ok": True, "reason": "1 of 1 signatures"})).text
    assert "did NOT verify" not in ok and "The signature verified when this page was made" in ok
    unchecked = Page(render(review_case)).text
    assert "did NOT verify" not in unchecked and "signature verified" not in unchecked


def test_fingerprint_and_verify_commands(review_case):
    text = Page(render(review_case)).text
    assert f"fingerprint {FINGERPRINT}" in text
    assert "flopgate verify audit.intoto.json --pubkey KEY.pub --plan /srv/plans/plan.yaml" in text
    assert "sha256sum /srv/plans/plan.yaml" in text and DIGEST_A in text
    spaced = {**review_case, "plan": {**review_case["plan"], "path": "/srv/my plans/plan.yaml"}}
    text = Page(render(spaced, signer_fingerprint=None, attestation_name="out/a b.json")).text
    assert "flopgate verify 'out/a b.json' --pubkey KEY.pub --plan '/srv/my plans/plan.yaml'" in text
    assert "fingerprint unknown" in text


def test_print_styles_and_no_javascript(review_case):
    html = render(review_case)
    css = "".join(Page(html).styles)
    assert re.search(r"@page\s*{[^}]*size:\s*A4", css)
    assert "@media print" in css
    assert not re.search(r"<script|javascript:|\bon[a-z]+=", html, re.I)


def test_rendering_is_a_pure_function(review_case):
    assert render(review_case) == render(review_case)


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, expected", [
    ("decision", None, "audit predicate: decision: expected an object, got NoneType"),
    ("inputs", {}, "audit predicate: inputs: expected a list, got dict"),
    ("outcome", 3, "audit predicate: outcome: expected a string, got int"),
])
def test_malformed_predicate_is_a_one_line_input_error(review_case, field, value, expected):
    with pytest.raises(InputError) as caught:
        render({**review_case, field: value})
    assert str(caught.value) == expected


def test_a_missing_nested_field_is_an_input_error(review_case):
    compute = {k: v for k, v in review_case["compute"].items() if k != "student"}
    with pytest.raises(InputError, match=r"^audit predicate: .*student") as caught:
        render({**review_case, "compute": compute})
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="expected a JSON object"):
        render_audit_html([], signer_fingerprint=None)


def test_the_chart_legend_names_the_date_the_rules_apply_as_of(review_case):
    """The legend said "in force on the start date" while the page said "Rules applied as of"
    another date (the later of the start and the audit day)."""
    review_case["as_of"] = "2027-02-05"
    html = render(review_case)
    assert "Rules applied as of <strong>2027-02-05</strong>" in html
    assert "legal threshold in force on 2027-02-05" in html and "start date" not in html


def test_planned_energy_is_shown_beside_the_hardware_cross_check(review_case):
    """64 H100 SXM x 120 h = 7,680 accelerator-hours x 700 W x 1.56 = 8,386.6 kWh = 8.4 MWh."""
    from audit.compute.tables import load_reference_tables
    from audit.energy import run_energy

    energy = run_energy(None, 64 * 120, devices=[], device_name="H100-SXM", device_type="cuda",
                        plan_hardware={"accelerator": "H100-SXM"}, tables=load_reference_tables(), reason="planned")
    review_case["compute"]["hardware"]["planned_energy"] = energy.to_dict()
    cell = rows(render(review_case))["Planned energy (accelerator-hours × board power × PUE)"]
    assert cell.startswith("8,387 kWh, 8.4e0 MWh") and "700 W, PUE 1.56" in cell
    assert "Planned energy" not in render(report_cases.review_case())   # an audit without the figure: no row

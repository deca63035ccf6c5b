"""tools/analyze.py's markdown, and docs/models.md as the tool writes it (the model table cannot
drift from the registry and the models)."""
import os
import sys

import pytest

from helpers import ROOT, load_tool

sys.path.insert(0, os.path.join(ROOT, 'tools'))
analyze = load_tool('analyze', 'analyze_tool')

MODELS_PAGE = os.path.join(ROOT, 'docs', 'models.md')


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in text.splitlines()
            if line.startswith('|')]


def test_markdown_row_counts_the_model_and_shows_its_paper_figures():
    rows = table_rows(analyze.markdown([analyze.count('deit_tiny_patch16_224')]))
    header, _, row = rows
    assert len(row) == len(header) == 8
    # DeiT-Ti as the registry records the DeiT README: 5.7M parameters, 1.26 GMACs, 72.2% top-1.
    assert row[:4] == ['deit_tiny_patch16_224', '224x224', '5.72', '5.70']
    assert 1.2 < float(row[4]) < 1.3 and row[6] == '72.2'


def test_page_is_the_preamble_then_the_table():
    rows = [analyze.count('t2t_vit_7')]
    text = analyze.page(rows)
    assert text.startswith('# Models\n') and text.endswith(analyze.markdown(rows) + '\n')
    assert 'python tools/analyze.py --markdown docs/models.md' in text


def test_docs_models_page_is_what_the_tool_writes(tmp_path, capsys):
    out = tmp_path / 'models.md'
    analyze.main(['--markdown', str(out)])
    written = out.read_text()
    assert [r[0] for r in table_rows(written)[2:]] == sorted(analyze.zoo.list_models('*'))
    with open(MODELS_PAGE) as f:
        committed = f.read()
    if committed != written:
        pytest.fail('docs/models.md differs from what tools/analyze.py writes: run '
                    '`python tools/analyze.py --markdown docs/models.md` and commit the result')

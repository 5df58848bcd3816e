#!/usr/bin/env python3
"""Two rules of the public API and the code (issue 16), checked on the source
text: no function longer than 120 lines unless its doc says why (a line
`Long because …`), and a `# Errors` section in the doc of every public function
that returns a `Result`. Prints each breach and exits 1, or says there is none.
Run by .ci/run. A text scan, not the compiler: a function is taken from its
`fn` line to the first line that closes it at the same indentation."""
import glob
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
LIMIT = 120
FN = re.compile(r'^(\s*)(pub(\([a-z]+\))? )?(const )?(async )?fn (\w+)')

def doc_above(lines, i):
    doc = []
    k = i - 1
    while k >= 0 and (lines[k].strip().startswith('///') or lines[k].strip().startswith('#[')):
        doc.append(lines[k])
        k -= 1
    return doc

breaches = []
files = glob.glob(ROOT + '/src/**/*.rs', recursive=True) + glob.glob(ROOT + '/systems/*.rs')
for f in sorted(files):
    lines = open(f).read().split('\n')
    rel = os.path.relpath(f, ROOT)
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or line.rstrip().endswith(';'):
            continue
        indent, name = m.group(1), m.group(6)
        end = i
        while end < len(lines) and lines[end] != indent + '}':
            end += 1
        doc = doc_above(lines, i)
        length = end - i + 1
        if length > LIMIT and not any('Long because' in d for d in doc):
            breaches.append(f'{rel}:{i + 1}: fn {name} is {length} lines (limit {LIMIT})')
        if m.group(2) == 'pub ':
            sig = ' '.join(lines[i:i + 8])
            sig = sig[:sig.find('{')] if '{' in sig else sig
            if 'Result<' in sig and not any('# Errors' in d for d in doc):
                breaches.append(f'{rel}:{i + 1}: pub fn {name} returns a Result without a # Errors section')

for b in breaches:
    print(b)
if breaches:
    sys.exit(1)
print(f'no function over {LIMIT} lines, every fallible public function documents its errors ({len(files)} files)')

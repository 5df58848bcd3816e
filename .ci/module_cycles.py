#!/usr/bin/env python3
"""Import cycles among the crate's top-level modules and folders (`crate::x`
references in code, comments and test modules left out): prints each strongly
connected component and exits 1, or says there is none. A folder under src/
counts as one module (its files may use each other), so a cycle between two
folders is caught even when their files form no cycle. Run by .ci/run."""
import re,os,sys,glob
# module-level graph: top-level modules of the crate (src/*.rs, src/*/mod.rs, systems)
root=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
mods={}
for f in glob.glob(root+'/src/**/*.rs',recursive=True)+glob.glob(root+'/systems/*.rs'):
    rel=os.path.relpath(f,root)
    if rel in ('src/main.rs','src/lib.rs'): continue
    parts=rel.split('/')
    if parts[0]=='systems': top='systems'
    else:
        top=parts[1][:-3] if len(parts)==2 else parts[1]
    txt=open(f).read()
    # strip test modules roughly
    txt=re.split(r'#\[cfg\(test\)\]\s*mod tests',txt)[0]
    # code only: doc and line comments name other modules without depending on them
    # (whole-line comments only: `//` inside a string such as a URL is code)
    txt='\n'.join(l for l in txt.split('\n') if not l.lstrip().startswith('//'))
    deps=set(re.findall(r'crate::([a-z_]+)',txt))
    deps|=set(re.findall(r'super::super::([a-z_]+)',txt))
    mods.setdefault(top,set()).update(d for d in deps if d!=top)
known=set(mods)
g={m:{d for d in ds if d in known} for m,ds in mods.items()}
# tarjan
idx={};low={};st=[];on=set();res=[];c=[0]
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in g[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        res.append(comp)
sys.setrecursionlimit(10000)
for v in g:
    if v not in idx: sc(v)
cyc=[c for c in res if len(c)>1]
for c in cyc:
    print('cycle:',sorted(c))
    for m in sorted(c):
        print('  ',m,'->',sorted(d for d in g[m] if d in c))
if not cyc: print('no import cycle among', len(g), 'modules')
sys.exit(1 if cyc else 0)

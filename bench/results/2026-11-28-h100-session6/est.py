import json,sys,statistics as st
# usage: est.py REPS FILE...  (bench --child ...:blocks output; batch 128, 20-step blocks)
B=20; reps=int(sys.argv[1])
for f in sys.argv[2:]:
    try: m=json.load(open(f))
    except Exception as e: print(f,'unreadable',e); continue
    s=m['samples']; n=len(s); warm=n//reps
    blocks={}
    for k,sps in enumerate(s):
        blocks.setdefault((warm+k)//B,[]).append(128/sps)
    bl=sorted((b,sum(v)/len(v)) for b,v in blocks.items() if len(v)==B)
    d=dict(bl); probed=[t for b,t in bl if b%2==0]; plain=[t for b,t in bl if b%2==1]
    pr=[t/((d[b-1]+d[b+1])/2)-1 for b,t in bl if b%2==0 and b-1 in d and b+1 in d]
    print('%-40s blocks %d  plain %.2f ms  probed %.2f ms  ratio-of-medians %+.1f%%  median pair ratio %+.1f%%' % (f.split('/')[-1], len(bl), 1e3*st.median(plain), 1e3*st.median(probed), 100*(st.median(probed)/st.median(plain)-1), 100*st.median(pr) if pr else float('nan')))

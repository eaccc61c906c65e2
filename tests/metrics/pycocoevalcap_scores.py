"""pycocoevalcap's scores of a COCO results file against annotations, as COCOEvalCap.evaluate computes
them (PTBTokenizer on references, then on captions; Bleu(4), Rouge, Cider), with per-image values and
the tokenised captions: the reference that tests/metrics.rs holds `clipcap score` to.

usage: pycocoevalcap_scores.py RESULTS ANNOTATIONS  (prints JSON)
"""

import json
import sys

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

results = json.load(open(sys.argv[1], encoding="utf-8"))
data = json.load(open(sys.argv[2], encoding="utf-8"))
gts, res = {}, {}
for a in data["annotations"]:
    gts.setdefault(a["image_id"], []).append({"caption": a["caption"]})
# COCOEvalCap evaluates the images in the order of the annotations' `images` list (cocoRes.getImgIds()).
ids = [i["id"] for i in data["images"] if i["id"] in gts]
for r in results:
    res[r["image_id"]] = [{"caption": r["caption"]}]
gts = {i: gts[i] for i in ids}
res = {i: res[i] for i in ids}
tokenizer = PTBTokenizer()
gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
rouge, rouge_each = Rouge().compute_score(gts, res)
cider, cider_each = Cider().compute_score(gts, res)
print(json.dumps(dict(bleu=bleu, rouge_l=rouge, cider_d=cider, ids=ids, rouge_each=list(rouge_each),
                      cider_each=list(cider_each), captions=[res[i][0] for i in ids],
                      references=[gts[i] for i in ids])))

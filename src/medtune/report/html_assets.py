"""report.html's stylesheet and script, inlined into the page: it is one file that fetches nothing.

The script sorts tables (by each cell's data-sort), switches tabs and steps through the sample
questions; without it every number is still on the page, only the hidden panels stay hidden.
"""

CSS = """
:root{--ink:#1f2328;--muted:#666;--line:#d8dbe0;--bg:#fff;--soft:#f5f6f8;--clear:#17663a;--warn:#8a4b00}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1400px;padding:12px 20px 40px;
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--ink);background:var(--bg)}
h1{font-size:1.35rem;margin:.2rem 0}
h2{font-size:1.2rem;margin:1.6rem 0 .5rem;padding-top:.4rem;border-top:1px solid var(--line)}
#verdict h2{border-top:0;margin-top:.4rem}
h3{font-size:1.02rem;margin:1.1rem 0 .4rem}
h4{font-size:.95rem;margin:0 0 .3rem;display:inline}
.lead,.desc{margin:.2rem 0;color:var(--muted)}
.fine{font-size:.88rem;color:var(--muted);margin:.4rem 0}
.warn{background:#fff6e6;border-left:4px solid #e0a23b;padding:.4rem .6rem;margin:.4rem 0;font-size:.92rem}
.warn-text{color:var(--warn)}
nav{display:flex;flex-wrap:wrap;gap:.3rem 1rem;padding:.35rem 0;border-bottom:1px solid var(--line);
  position:sticky;top:0;background:var(--bg);z-index:2}
nav a{color:#0b57d0;text-decoration:none;font-size:.92rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:8px}
.card{border:1px solid var(--line);border-radius:6px;padding:.4rem .6rem;background:var(--soft)}
.card h3{margin:0 0 .2rem;font-size:.95rem}
.card small{font-weight:normal;color:var(--muted)}
.card ol{margin:0;padding-left:1.3rem}
.card li{margin:0;font-size:.9rem;line-height:1.35}
.call{font-size:.82rem;color:var(--muted)}
.call.clear{color:var(--clear);font-weight:600}
.sw{display:inline-block;width:.7em;height:.7em;border-radius:2px;margin-right:.3em;vertical-align:baseline}
.ci{color:var(--muted);white-space:nowrap}
.short li{margin:.15rem 0}
.wrap{overflow-x:auto;margin:.3rem 0 .8rem;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.88rem;min-width:100%}
th,td{border-bottom:1px solid var(--line);padding:.3rem .5rem;text-align:left;vertical-align:top}
td{font-variant-numeric:tabular-nums}
td:first-child{white-space:nowrap}
th{background:var(--soft);position:sticky;top:0}
th button{all:unset;cursor:pointer;font-weight:600}
th button::after{content:" ↕";color:#aaa}
th[aria-sort=ascending] button::after{content:" ▲";color:var(--ink)}
th[aria-sort=descending] button::after{content:" ▼";color:var(--ink)}
th button:focus-visible,button:focus-visible{outline:2px solid #0b57d0}
figure{margin:.4rem 0;min-width:0;max-width:640px}
figure svg{width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:var(--muted)}
.grid2,.grid3{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(300px,1fr))}
.grid3{grid-template-columns:repeat(auto-fit,minmax(340px,1fr))}
.legend{list-style:none;padding:0;margin:.2rem 0;display:flex;flex-wrap:wrap;gap:.2rem 1rem;font-size:.85rem}
.tabs{display:flex;flex-wrap:wrap;gap:4px;margin:.4rem 0}
.tabs button,.steps button{font:inherit;font-size:.88rem;padding:.25rem .7rem;
  border:1px solid var(--line);border-radius:999px;background:var(--bg);cursor:pointer}
.tabs button[aria-selected=true]{background:var(--ink);color:#fff;border-color:var(--ink)}
.steps{display:flex;gap:8px;margin:.4rem 0}
.where{margin:.2rem 0;color:var(--muted);font-size:.88rem}
.answers{display:grid;gap:10px;grid-template-columns:repeat(auto-fit,minmax(260px,1fr))}
.answer{border:1px solid var(--line);border-radius:6px;padding:.5rem .7rem}
.answer.ref{background:var(--soft)}
.answer p{margin:.3rem 0;white-space:pre-wrap;overflow-wrap:anywhere}
.answer .scores{font-size:.85rem;color:var(--muted)}
.setup li{margin:.2rem 0;overflow-wrap:anywhere}
code{font-size:.88em;background:var(--soft);padding:0 .2em;border-radius:3px;overflow-wrap:anywhere}
[hidden]{display:none!important}
[id]{scroll-margin-top:3.5rem}
@media (max-width:600px){
  body{padding:8px 10px 30px;font-size:14px}
  [id]{scroll-margin-top:5rem}
  .ci{display:block}
  .cards{grid-template-columns:1fr}
}
"""

JS = """
(function(){
'use strict';
function key(cell){var s=cell?cell.getAttribute('data-sort'):'';return s===null?'':s;}
function cmp(a,b){
  if(a===''||b==='')return a===b?0:(a===''?1:-1);
  var x=parseFloat(a),y=parseFloat(b);
  if(!isNaN(x)&&!isNaN(y)&&String(x)!=='NaN'&&/^[-+0-9.eE]+$/.test(a)&&/^[-+0-9.eE]+$/.test(b))return x-y;
  return a.localeCompare(b);
}
document.querySelectorAll('table.sortable').forEach(function(t){
  var ths=t.tHead.rows[0].cells;
  Array.prototype.forEach.call(ths,function(th,col){
    var b=th.querySelector('button');if(!b)return;
    b.addEventListener('click',function(){
      var asc=th.getAttribute('aria-sort')!=='ascending';
      Array.prototype.forEach.call(ths,function(o){o.setAttribute('aria-sort','none');});
      th.setAttribute('aria-sort',asc?'ascending':'descending');
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(r1,r2){var a=key(r1.cells[col]),b=key(r2.cells[col]);
        if(a===''||b==='')return cmp(a,b);return asc?cmp(a,b):cmp(b,a);});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
function show(group,button){
  group.querySelectorAll('button[data-target]').forEach(function(o){
    var on=o===button;o.setAttribute('aria-selected',on?'true':'false');
    var panel=document.getElementById(o.getAttribute('data-target'));if(panel)panel.hidden=!on;
  });
}
document.querySelectorAll('[data-tabs]').forEach(function(g){
  g.querySelectorAll('button[data-target]').forEach(function(b){b.addEventListener('click',function(){show(g,b);});});
});
document.querySelectorAll('a[href="#per-seed"]').forEach(function(a){
  a.addEventListener('click',function(){
    var b=document.querySelector('button[data-target="per-seed-panel"]');if(b)b.click();
  });
});
document.querySelectorAll('.stepper').forEach(function(s){
  var qs=s.querySelectorAll('.question'),i=0;
  function go(k){i=(k+qs.length)%qs.length;qs.forEach(function(q,j){q.hidden=j!==i;});}
  s.querySelectorAll('button[data-step]').forEach(function(b){
    b.addEventListener('click',function(){go(i+parseInt(b.getAttribute('data-step'),10));});
  });
  s.addEventListener('keydown',function(e){if(e.key==='ArrowRight')go(i+1);if(e.key==='ArrowLeft')go(i-1);});
});
})();
"""

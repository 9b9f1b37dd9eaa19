/**
 * The dashboard's frame: the document head (viewport for phones, the
 * stylesheet and the small refresh script served by the same server), the
 * navigation and the sign-out form, and the login page. Pure: a page is a
 * string made from data.
 */
import { h, raw, type Html, type Interpolated } from "./html.ts";

export interface Viewer {
  name: string;
  role: string;
  csrf: string;
}

export const NAV = [
  ["overview", "/ui", "Overview"],
  ["rollouts", "/ui/rollouts", "Rollouts"],
  ["devices", "/ui/devices", "Devices"],
  ["images", "/ui/images", "Images"],
] as const;
export type Section = (typeof NAV)[number][0];

function head(title: string): Html {
  return h`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · EOS fleet</title>
<link rel="stylesheet" href="/ui/app.css">
<script src="/ui/app.js" defer></script>
</head>`;
}

export function csrfField(csrf: string): Html {
  return h`<input type="hidden" name="csrf" value="${csrf}">`;
}

/** A page of the signed-in dashboard; `live`: its main part is fetched again every few seconds. */
export function page(o: {
  title: string;
  viewer: Viewer;
  section: Section;
  body: Html;
  live?: boolean;
}): string {
  const nav = NAV.map(
    ([key, href, label]) =>
      h`<li><a href="${href}" ${key === o.section ? raw(' aria-current="page"') : ""}>${label}</a></li>`,
  );
  return h`${head(o.title)}
<body>
<a class="skip" href="#main">Skip to content</a>
<header>
<nav aria-label="Dashboard"><ul>${nav}</ul></nav>
<form method="post" action="/ui/logout" class="who">${csrfField(o.viewer.csrf)}
<span>${o.viewer.name} (${o.viewer.role})</span> <button type="submit">Sign out</button></form>
</header>
<main id="main"${o.live ? raw(' data-live="10"') : ""}>
<h1>${o.title}</h1>
${o.body}
</main>
<div id="announcer" class="visually-hidden" aria-live="polite"></div>
</body>
</html>
`.text;
}

export function loginPage(o: { error?: string | undefined; status?: string | undefined }): string {
  return h`${head("Sign in")}
<body>
<main id="main" class="narrow">
<h1>EOS fleet: sign in</h1>
${o.status ? h`<p class="note" role="status">${o.status}</p>` : ""}
${o.error ? h`<p class="error" role="alert">${o.error}</p>` : ""}
<form method="post" action="/ui/login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required
  pattern="eosadm_[A-Za-z0-9_\\-]{16,128}" aria-describedby="token-help">
<p id="token-help" class="help">A token from <code>os-update-server admin-token add NAME --role ROLE</code>.</p>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
`.text;
}

/** A refusal or a failure, inside the frame when someone is signed in. */
export function messagePage(o: {
  title: string;
  message: string;
  viewer?: Viewer | undefined;
  back?: string;
}): string {
  const body = h`<p class="error" role="alert">${o.message}</p>
    <p><a href="${o.back ?? "/ui"}">Back</a></p>`;
  if (o.viewer) return page({ title: o.title, viewer: o.viewer, section: "overview", body });
  return h`${head(o.title)}<body><main id="main" class="narrow"><h1>${o.title}</h1>${body}</main></body></html>
`.text;
}

/** A table with column headers, scrolling sideways on a narrow screen rather than squeezing. */
export function dataTable(headers: readonly string[], rows: Interpolated): Html {
  const ths = headers.map((x) => h`<th scope="col">${x}</th>`);
  return h`<div class="scroll"><table><thead><tr>${ths}</tr></thead><tbody>${rows}</tbody></table></div>`;
}

/** A table row of cells. */
export function tableRow(cells: readonly Interpolated[]): Html {
  return h`<tr>${cells.map((c) => h`<td>${c}</td>`)}</tr>`;
}

/** A labelled bar: `share` of 0..1, with the threshold marked when given. */
export function bar(label: string, share: number, o: { threshold?: number; kind?: "ok" | "bad" } = {}): Html {
  const pct = Math.max(0, Math.min(100, share * 100));
  const mark =
    o.threshold === undefined
      ? ""
      : h`<span class="mark" style="left:${(o.threshold * 100).toFixed(1)}%" title="threshold"></span>`;
  return h`<div
    class="bar ${o.kind ?? "ok"}"
    role="img"
    aria-label="${label}: ${pct.toFixed(0)}%${
      o.threshold === undefined ? "" : `, threshold ${(o.threshold * 100).toFixed(0)}%`
    }"
  >
    <span class="fill" style="width:${pct.toFixed(1)}%"></span>${mark}
  </div>`;
}

export const CSS = `
:root{font-family:system-ui,sans-serif;line-height:1.4;color:#1b1f24;background:#fff}
body{margin:0}
header{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:center;gap:.5rem;padding:.5rem 1rem;background:#12324a;color:#fff}
header a{color:#fff}
nav ul{display:flex;flex-wrap:wrap;gap:1rem;list-style:none;margin:0;padding:0}
nav a[aria-current=page]{font-weight:bold;text-decoration-thickness:3px}
main{padding:1rem;max-width:72rem;margin:0 auto}
main.narrow{max-width:28rem}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;color:#000;padding:.5rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #d0d7de;vertical-align:top}
.scroll{overflow-x:auto}
label{display:block;font-weight:600;margin-top:.5rem}
input,select,button{font:inherit;padding:.35rem .5rem;max-width:100%}
button,.button{background:#12324a;color:#fff;border:0;border-radius:4px;cursor:pointer;text-decoration:none;display:inline-block;padding:.35rem .8rem}
button.danger,.button.danger{background:#a40e26}
:focus-visible{outline:3px solid #f0a000;outline-offset:2px}
.filters{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-end}
.error{color:#a40e26;font-weight:600}.note{color:#0b5}
.visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
.help{font-size:.9em;color:#555;margin:.2rem 0 .6rem}
.rollout-form input,.rollout-form select{width:100%;max-width:32rem;box-sizing:border-box}
[aria-invalid=true]{border:2px solid #a40e26}
.error a{color:inherit}
.bar{position:relative;height:1rem;background:#e6e9ee;border-radius:3px;min-width:8rem}
.bar .fill{position:absolute;left:0;top:0;bottom:0;background:#2a7d4f;border-radius:3px}
.bar.bad .fill{background:#c0392b}
.bar .mark{position:absolute;top:-3px;bottom:-3px;width:2px;background:#000}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(10rem,1fr));gap:.75rem}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.75rem}
.card strong{display:block;font-size:1.6rem}
svg{max-width:100%;height:auto}
.who{display:flex;gap:.5rem;align-items:center}
.who button{background:#fff;color:#12324a}
ol.timeline{padding-left:1.2rem}
@media (max-width:40rem){th,td{padding:.25rem}main{padding:.5rem}}
`;

/**
 * Refreshes each [data-live] region every data-live seconds from data-src (a
 * fragment URL; default the page itself), taking the element of the same id
 * from the answer; no framework. It skips while the keyboard focus is inside
 * the region (typing, tabbing) or the tab is hidden, swaps only on a change,
 * and stops once the session is gone (401, or a redirect to the sign-in
 * page) or the thing shown is (404): a reload then says why.
 *
 * A region marked data-keyed keeps its children that have an id (they
 * refresh themselves: replacing them would reset their own live regions) and
 * takes in only new ones, which start refreshing at once; a list of
 * rollouts grows that way without a reload. A region whose swapped content
 * holds a [data-announce] summary that changed puts it in the page's one
 * persistent status region: a region replaced wholesale is not announced by
 * screen readers, and a whole page read out on each refresh would be noise.
 */
export const SCRIPT = `
(function(){
  if(!window.fetch||!window.DOMParser)return;
  var announcer=document.getElementById("announcer");
  function summary(el){var s=el.querySelector("[data-announce]");return s?s.textContent.replace(/\\s+/g," ").trim():"";}
  function watch(region,now){
    var src=region.getAttribute("data-src")||location.href;
    var said=summary(region);
    function poll(){
      if(!document.contains(region)){clearInterval(timer);return;}
      if(document.hidden)return;
      var a=document.activeElement;
      if(a&&a!==document.body&&region.contains(a))return;
      fetch(src,{credentials:"same-origin",headers:{"x-eos-refresh":"1"}}).then(function(r){
        if(r.status===401||r.status===404||r.redirected){clearInterval(timer);return null;}
        return r.ok?r.text():null;
      }).then(function(t){
        if(t===null||!document.contains(region))return;
        var fresh=new DOMParser().parseFromString(t,"text/html").getElementById(region.id);
        if(!fresh)return;
        if(region.hasAttribute("data-keyed"))merge(region,fresh);
        else if(fresh.innerHTML!==region.innerHTML)region.innerHTML=fresh.innerHTML;
        var news=summary(region);
        if(news!==said){said=news;if(announcer&&news)announcer.textContent=news;}
      }).catch(function(){});
    }
    var timer=setInterval(poll,Number(region.getAttribute("data-live"))*1000);
    if(now)poll();
  }
  function merge(region,fresh){
    var kids=Array.prototype.slice.call(fresh.children);
    var mine=region.children;
    if(kids.length===mine.length&&kids.every(function(c,i){return c.id&&c.id===mine[i].id;}))return;
    var next=kids.map(function(c){
      var old=c.id?document.getElementById(c.id):null;
      return old&&old.parentNode===region?{node:old}:{node:document.importNode(c,true),added:true};
    });
    while(region.firstChild)region.removeChild(region.firstChild);
    next.forEach(function(n){region.appendChild(n.node);if(n.added)start(n.node,true);});
  }
  function start(root,now){
    root.querySelectorAll("[data-live][id]").forEach(function(r){watch(r,now);});
  }
  start(document,false);
})();
`;

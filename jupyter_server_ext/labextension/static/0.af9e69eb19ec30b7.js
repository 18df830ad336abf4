"use strict";(self.rspackChunkloquilex_labextension=self.rspackChunkloquilex_labextension||[]).push([[0],{19(e,t,o){var r=o(20),n=o.n(r),a=o(21),i=(o.n(a))()(n());i.push([e.id,`/* Theme-aware: only JupyterLab's CSS variables, so light and dark themes both apply. */
.lx-Sidebar {
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  padding: 8px;
  overflow-y: auto;
  min-width: 240px;
}
.lx-Sidebar-head { display: flex; flex-direction: column; align-items: stretch; gap: 6px; }
.lx-title { font-size: var(--jp-ui-font-size2); margin: 4px 0; }
.lx-subtitle { font-size: var(--jp-ui-font-size1); text-transform: uppercase; color: var(--jp-ui-font-color2); margin: 12px 0 4px; }
.lx-sessions { list-style: none; margin: 0; padding: 0; }
.lx-session { border: 1px solid var(--jp-border-color2); border-radius: 4px; padding: 6px; margin-bottom: 6px; background: var(--jp-layout-color0); }
.lx-row-head { display: flex; flex-wrap: wrap; gap: 6px; font-size: var(--jp-ui-font-size0); }
.lx-state { font-weight: 600; }
.lx-session[data-state='running'] .lx-state, .lx-CaptionPanel[data-state='live'] .lx-state { color: var(--jp-success-color1); }
.lx-session[data-state='failed'] .lx-state { color: var(--jp-error-color1); }
.lx-kind, .lx-owner, .lx-age { color: var(--jp-ui-font-color2); }
.lx-final-line { margin-top: 4px; }
.lx-partial { color: var(--jp-ui-font-color2); font-style: italic; }
.lx-tools { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 4px; }
.lx-btn { padding: 0 8px; height: 22px; line-height: 20px; font-size: var(--jp-ui-font-size0); }
.lx-btn:focus-visible, .lx-mic:focus-visible { outline: 2px solid var(--jp-brand-color1); outline-offset: 1px; }
.lx-error { color: var(--jp-error-color1); background: var(--jp-error-color3); border-radius: 4px; padding: 6px; margin: 6px 0; }
.lx-error:empty { display: none; }
.lx-counter-table { width: 100%; border-collapse: collapse; font-size: var(--jp-ui-font-size0); }
.lx-counter-table th { text-align: left; font-weight: normal; color: var(--jp-ui-font-color2); }
.lx-counter-table td.lx-value { text-align: right; padding-right: 6px; font-family: var(--jp-code-font-family); }
.lx-spark polyline { fill: none; stroke: var(--jp-brand-color1); stroke-width: 1.2; }
.lx-CaptionPanel {
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  display: flex;
  flex-direction: column;
  height: 100%;
  padding: 8px 12px;
  box-sizing: border-box;
}
.lx-CaptionPanel-head { display: flex; align-items: center; justify-content: space-between; gap: 8px; flex-wrap: wrap; }
.lx-CaptionPanel-body { flex: 1; overflow-y: auto; font-size: var(--jp-content-font-size3); line-height: 1.5; }
.lx-finals { list-style: none; padding: 0; margin: 8px 0; }
.lx-final { margin: 4px 0; }
.lx-final.lx-revised .lx-text { text-decoration: underline dotted var(--jp-ui-font-color3); }
.lx-time { font-family: var(--jp-code-font-family); font-size: var(--jp-ui-font-size0); color: var(--jp-ui-font-color2); margin-right: 8px; }
.lx-notices { list-style: none; padding: 0; margin: 4px 0; color: var(--jp-warn-color1); font-size: var(--jp-ui-font-size0); }
.lx-stats { font-size: var(--jp-ui-font-size0); color: var(--jp-ui-font-color3); }
`,""]),o.d(t,{},{A:i})},21(e){e.exports=function(e){var t=[];return t.toString=function(){return this.map(function(t){var o="",r=void 0!==t[5];return t[4]&&(o+="@supports (".concat(t[4],") {")),t[2]&&(o+="@media ".concat(t[2]," {")),r&&(o+="@layer".concat(t[5].length>0?" ".concat(t[5]):""," {")),o+=e(t),r&&(o+="}"),t[2]&&(o+="}"),t[4]&&(o+="}"),o}).join("")},t.i=function(e,o,r,n,a){"string"==typeof e&&(e=[[null,e,void 0]]);var i={};if(r)for(var l=0;l<this.length;l++){var s=this[l][0];null!=s&&(i[s]=!0)}for(var p=0;p<e.length;p++){var c=[].concat(e[p]);r&&i[c[0]]||(void 0!==a&&(void 0===c[5]||(c[1]="@layer".concat(c[5].length>0?" ".concat(c[5]):""," {").concat(c[1],"}")),c[5]=a),o&&(c[2]&&(c[1]="@media ".concat(c[2]," {").concat(c[1],"}")),c[2]=o),n&&(c[4]?(c[1]="@supports (".concat(c[4],") {").concat(c[1],"}"),c[4]=n):c[4]="".concat(n)),t.push(c))}},t}},20(e){e.exports=function(e){return e[1]}},13(e){var t=[];function o(e){for(var o=-1,r=0;r<t.length;r++)if(t[r].identifier===e){o=r;break}return o}function r(e,r){for(var n={},a=[],i=0;i<e.length;i++){var l=e[i],s=r.base?l[0]+r.base:l[0],p=n[s]||0,c="".concat(s," ").concat(p);n[s]=p+1;var u=o(c),f={css:l[1],media:l[2],sourceMap:l[3],supports:l[4],layer:l[5]};if(-1!==u)t[u].references++,t[u].updater(f);else{var d=function(e,t){var o=t.domAPI(t);return o.update(e),function(t){t?(t.css!==e.css||t.media!==e.media||t.sourceMap!==e.sourceMap||t.supports!==e.supports||t.layer!==e.layer)&&o.update(e=t):o.remove()}}(f,r);r.byIndex=i,t.splice(i,0,{identifier:c,updater:d,references:1})}a.push(c)}return a}e.exports=function(e,n){var a=r(e=e||[],n=n||{});return function(e){e=e||[];for(var i=0;i<a.length;i++){var l=o(a[i]);t[l].references--}for(var s=r(e,n),p=0;p<a.length;p++){var c=o(a[p]);0===t[c].references&&(t[c].updater(),t.splice(c,1))}a=s}}},15(e){var t={};e.exports=function(e,o){var r=function(e){if(void 0===t[e]){var o=document.querySelector(e);if(window.HTMLIFrameElement&&o instanceof window.HTMLIFrameElement)try{o=o.contentDocument.head}catch(e){o=null}t[e]=o}return t[e]}(e);if(!r)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");r.appendChild(o)}},17(e){e.exports=function(e){var t=document.createElement("style");return e.setAttributes(t,e.attributes),e.insert(t,e.options),t}},16(e,t,o){e.exports=function(e){var t=o.nc;t&&e.setAttribute("nonce",t)}},14(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var t=e.insertStyleElement(e);return{update:function(o){var r,n,a;r="",o.supports&&(r+="@supports (".concat(o.supports,") {")),o.media&&(r+="@media ".concat(o.media," {")),(n=void 0!==o.layer)&&(r+="@layer".concat(o.layer.length>0?" ".concat(o.layer):""," {")),r+=o.css,n&&(r+="}"),o.media&&(r+="}"),o.supports&&(r+="}"),(a=o.sourceMap)&&"u">typeof btoa&&(r+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),e.styleTagTransform(r,t,e.options)},remove:function(){var e;null===(e=t).parentNode||e.parentNode.removeChild(e)}}}},18(e){e.exports=function(e,t){if(t.styleSheet)t.styleSheet.cssText=e;else{for(;t.firstChild;)t.removeChild(t.firstChild);t.appendChild(document.createTextNode(e))}}},12(e,t,o){var r=o(13),n=o.n(r),a=o(14),i=o.n(a),l=o(15),s=o.n(l),p=o(16),c=o.n(p),u=o(17),f=o.n(u),d=o(18),x=o.n(d),v=o(19),m={};m.styleTagTransform=x(),m.setAttributes=c(),m.insert=s().bind(null,"head"),m.domAPI=i(),m.insertStyleElement=f(),n()(v.A,m),v.A&&v.A.locals&&v.A.locals}}]);
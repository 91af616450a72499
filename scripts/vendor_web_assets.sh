#!/usr/bin/env bash
# Re-fetch the JavaScript the built site serves itself, so that no page loads anything from another host:
#   - require.js and @jupyter-widgets/html-manager (the runtime that draws widgets on a page with no kernel),
#   - anywidget's front end (the widget model every attnlib figure uses),
#   - MathJax 3 (TeX input, CommonHTML output, its extensions and woff fonts).
# Files come from the npm registry (`npm pack`) and land in _extra/vendor/, which the book copies to the site's
# root (html_extra_path), NOT into _static/: Jupyter Book adds every .js found under html_static_path to every
# page, which would load the widget runtime twice. The versions are pinned to the Python packages in .venv:
# anywidget's npm front end has the version of the anywidget wheel, and html-manager 1.0.15 is the release
# built on the same @jupyter-widgets/base 6.0.12 and controls 5.0.13 that ipywidgets 8.1.9 bundles.
# Usage: bash scripts/vendor_web_assets.sh   (needs npm and network access to the npm registry)
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREJS=2.3.8
HTML_MANAGER=1.0.15
ANYWIDGET=0.11.0
MATHJAX=3.2.2
IPYWIDGETS=8.1.9  # the ipywidgets release that HTML_MANAGER matches

installed() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pin in "anywidget $ANYWIDGET" "ipywidgets $IPYWIDGETS"; do
  set -- $pin
  have=$(installed "$1")
  if [ "$have" != "$2" ]; then
    echo "error: .venv has $1 $have but this script pins $2; update the pins (and check the matching" >&2
    echo "       @jupyter-widgets/html-manager release) before re-vendoring." >&2
    exit 1
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dest=_extra/vendor
rm -rf "$dest"
mkdir -p "$dest"
echo "# Files under this folder were fetched by scripts/vendor_web_assets.sh with npm pack." > "$dest/SOURCES.txt"
echo "# package@version  tarball sha512 integrity (as published on the npm registry)" >> "$dest/SOURCES.txt"

# fetch PACKAGE@VERSION: unpack it into $work/<name>-<version>/ and record its integrity.
fetch() {
  local spec=$1 folder=$2
  local json
  json=$(cd "$work" && npm pack "$spec" --json --silent)
  local file integrity
  file=$(printf '%s' "$json" | .venv/bin/python -c "import json, sys; print(json.load(sys.stdin)[0]['filename'])")
  integrity=$(printf '%s' "$json" | .venv/bin/python -c "import json, sys; print(json.load(sys.stdin)[0]['integrity'])")
  mkdir -p "$work/$folder"
  tar xzf "$work/$file" -C "$work/$folder"
  echo "$spec  $integrity" >> "$dest/SOURCES.txt"
}

fetch "anywidget@$ANYWIDGET" anywidget
out="$dest/anywidget-$ANYWIDGET"
mkdir -p "$out"
# dist/index.js is an AMD module (define(["@jupyter-widgets/base"], ...)), exactly what require.js loads.
cp "$work/anywidget/package/dist/index.js" "$work/anywidget/package/LICENSE" "$work/anywidget/package/package.json" "$out/"

fetch "requirejs@$REQUIREJS" requirejs
out="$dest/requirejs-$REQUIREJS"
mkdir -p "$out"
cp "$work/requirejs/package/require.js" "$work/requirejs/package/package.json" "$out/"
# The npm tarball has no licence file; the header of require.js names its licence (MIT) and copyright holder.
{
  echo "RequireJS $REQUIREJS is released under the MIT licence. Its copyright notice, from the header of require.js:"
  echo
  sed -n '2,3p' "$work/requirejs/package/require.js" | sed 's/^ *\** *//; s/@license //'
  echo
  echo "The MIT licence text (the copy distributed with anywidget, without anywidget's title and copyright lines):"
  sed '1,3d' "$work/anywidget/package/LICENSE"
} > "$out/LICENSE.txt"

fetch "@jupyter-widgets/html-manager@$HTML_MANAGER" html-manager
out="$dest/jupyter-widgets-html-manager-$HTML_MANAGER"
mkdir -p "$out"
# embed-amd.js defines @jupyter-widgets/base, controls and html-manager as AMD modules and renders every widget
# view found in the page once the page has loaded. Its stylesheet brings FontAwesome 5, which the theme's own
# icons (class fa-solid, ...) then match, so the browser fetches those fonts from the folder of the bundled
# modules (require-paths.js below points it here): woff2 is the first format every current browser takes.
cp "$work/html-manager/package/dist/embed-amd.js" "$work/html-manager/package/package.json" "$out/"
cp "$work/html-manager/package/dist/"*.woff2 "$out/"
cp "$work/html-manager/package/dist/embed.js.LICENSE.txt" "$out/THIRD-PARTY-NOTICES.txt"
# The npm tarball has no licence file; the html-manager lives in the ipywidgets repository under its BSD licence,
# which the ipywidgets wheel ships.
.venv/bin/python - "$out/LICENSE" <<'PY'
import importlib.metadata, shutil, sys
files = importlib.metadata.distribution("ipywidgets").files
licence = next(f for f in files if f.name == "LICENSE")
shutil.copy(licence.locate(), sys.argv[1])
PY
# The fonts are Font Awesome Free 5.15.4's, whose licence the bundled stylesheet states in its header.
echo "The *.woff2 files are the fonts of Font Awesome Free 5.15.4 (https://fontawesome.com), bundled in" \
  "embed-amd.js's stylesheet. License - https://fontawesome.com/license/free (Icons: CC BY 4.0," \
  "Fonts: SIL OFL 1.1, Code: MIT License)" > "$out/FONTS-LICENSE.txt"

fetch "mathjax@$MATHJAX" mathjax
out="$dest/mathjax-$MATHJAX"
mkdir -p "$out/input/tex" "$out/output/chtml/fonts"
# tex-chtml.js bundles the loader, TeX input (with ams, newcommand, require, autoload, ...) and CommonHTML
# output; autoload fetches other TeX extensions from input/tex/extensions/ when a page uses one; CommonHTML
# draws with the woff fonts. All of them are found relative to tex-chtml.js, so they stay on this site.
cp "$work/mathjax/package/es5/tex-chtml.js" "$work/mathjax/package/LICENSE" "$work/mathjax/package/package.json" "$out/"
cp -r "$work/mathjax/package/es5/input/tex/extensions" "$out/input/tex/"
cp -r "$work/mathjax/package/es5/output/chtml/fonts/woff-v2" "$out/output/chtml/fonts/"

# Tell require.js where anywidget lives on this site (html-manager asks require.js for the module "anywidget"
# before it would fall back to a CDN) and where html-manager's fonts are, relative to this script's own
# address so it works from any page depth.
cat > "$dest/require-paths.js" <<EOF
// Generated by scripts/vendor_web_assets.sh: serve the anywidget front end from this site, not from a CDN.
(function () {
  var here = document.currentScript.src;
  window.requirejs.config({
    paths: {
      anywidget: new URL("anywidget-$ANYWIDGET/index", here).href,
      // The modules bundled in embed-amd.js look for their font files next to their own module addresses.
      "@jupyter-widgets": new URL("jupyter-widgets-html-manager-$HTML_MANAGER", here).href,
      "@jupyter-widgets/html-manager/dist": new URL("jupyter-widgets-html-manager-$HTML_MANAGER", here).href,
    },
  });
})();
EOF

du -sh "$dest"
echo "Vendored into $dest:"
cat "$dest/SOURCES.txt"

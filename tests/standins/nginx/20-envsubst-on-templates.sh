#!/bin/sh
# As the official image's 20-envsubst-on-templates.sh: every template under
# /etc/nginx/templates becomes conf.d/<same path without .template>, through envsubst over the
# names of the variables defined in the environment (nginx's own $variables survive).
set -e
template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
[ -d "$template_dir" ] || exit 0
if [ ! -w "$output_dir" ]; then
    echo "$0: ERROR: $template_dir exists, but $output_dir is not writable"; exit 0
fi
defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) { print ( name ~ /^[A-Za-z_][A-Za-z0-9_]*$/ ) ? name : \"\" } }" < /dev/null))
find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
    relative_path="${template#"$template_dir/"}"
    output_path="$output_dir/${relative_path%"$suffix"}"
    subdir=$(dirname "$relative_path")
    mkdir -p "$output_dir/$subdir"
    echo "$0: Running envsubst on $template to $output_path"
    envsubst "$defined_envs" < "$template" > "$output_path"
done

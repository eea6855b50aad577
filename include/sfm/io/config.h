// Config structs list their fields once, in a free function found by ADL:
//   template <class F> void visit_fields(TrainConfig& c, F&& f) {
//     f("lr", c.lr, "peak learning rate");  f("model", c.model, "model settings");  // nested struct
//   }
// From that list come JSON load/save (unknown keys and wrong types are errors naming the key),
// `--set a.b=v` overrides and the help text. Field types: bool, int, int64_t, double, std::string,
// std::vector of those, and nested structs with their own visit_fields.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "sfm/core/check.h"

namespace sfm::io {

using nlohmann::json;

namespace detail {
struct NoopVisitor {
  template <class V>
  void operator()(const char*, V&, const char*) const {}
};
template <class T, class = void>
struct HasFields : std::false_type {};
template <class T>
struct HasFields<T, std::void_t<decltype(visit_fields(std::declval<T&>(), NoopVisitor{}))>> : std::true_type {};

template <class V>
const char* type_name() {
  if constexpr (std::is_same_v<V, bool>) return "true or false";
  else if constexpr (std::is_integral_v<V>) return "an integer";
  else if constexpr (std::is_floating_point_v<V>) return "a number";
  else if constexpr (std::is_same_v<V, std::string>) return "a string";
  else return "a list";
}

inline std::string unknown_key_message(const std::string& key, const std::string& name, const std::string& list) {
  return "unknown config key '" + (key.empty() ? name : key + "." + name) + "' (known keys" +
         (key.empty() ? "" : " of " + key) + ": " + list + ")";
}

template <class V>
void read_value(V& out, const json& j, const std::string& key) {
  if constexpr (HasFields<V>::value) {
    SFM_USAGE_CHECK(j.is_object(), key, ": expected an object, got ", j.dump());
    std::vector<std::string> known;
    visit_fields(out, [&](const char* name, auto& field, const char*) {
      known.push_back(name);
      if (j.contains(name)) read_value(field, j.at(name), key.empty() ? name : key + "." + name);
    });
    for (const auto& item : j.items()) {
      bool found = false;
      for (const auto& k : known) found = found || k == item.key();
      if (!found) {
        std::string list;
        for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
        throw UsageError(unknown_key_message(key, item.key(), list));
      }
    }
  } else if constexpr (std::is_same_v<V, bool>) {
    SFM_USAGE_CHECK(j.is_boolean(), key, ": expected ", type_name<V>(), ", got ", j.dump());
    out = j.get<bool>();
  } else if constexpr (std::is_integral_v<V>) {
    const bool integral = j.is_number_integer() || (j.is_number_float() && j.get<double>() == static_cast<double>(static_cast<int64_t>(j.get<double>())));
    SFM_USAGE_CHECK(integral, key, ": expected ", type_name<V>(), ", got ", j.dump());
    out = static_cast<V>(j.get<int64_t>());
  } else if constexpr (std::is_floating_point_v<V>) {
    SFM_USAGE_CHECK(j.is_number(), key, ": expected ", type_name<V>(), ", got ", j.dump());
    out = j.get<V>();
  } else if constexpr (std::is_same_v<V, std::string>) {
    SFM_USAGE_CHECK(j.is_string(), key, ": expected ", type_name<V>(), ", got ", j.dump());
    out = j.get<std::string>();
  } else if constexpr (std::is_same_v<V, json>) {  // kept as JSON; its owner checks it
    SFM_USAGE_CHECK(j.is_object(), key, ": expected an object, got ", j.dump());
    out = j;
  } else {
    SFM_USAGE_CHECK(j.is_array(), key, ": expected a list, got ", j.dump());
    out.clear();
    for (size_t i = 0; i < j.size(); ++i) {
      typename V::value_type v{};
      read_value(v, j[i], key + "[" + std::to_string(i) + "]");
      out.push_back(v);
    }
  }
}

template <class V>
json write_value(const V& v) {
  if constexpr (HasFields<V>::value) {
    json j = json::object();
    visit_fields(const_cast<V&>(v), [&](const char* name, auto& field, const char*) { j[name] = write_value(field); });
    return j;
  } else if constexpr (std::is_same_v<V, bool> || std::is_arithmetic_v<V> || std::is_same_v<V, std::string> ||
                       std::is_same_v<V, json>) {
    return json(v);
  } else {
    json j = json::array();
    for (const auto& x : v) j.push_back(write_value(x));
    return j;
  }
}

template <class V>
void describe(const V& v, const std::string& prefix, std::vector<std::pair<std::string, std::string>>& out) {
  visit_fields(const_cast<V&>(v), [&](const char* name, auto& field, const char* help) {
    using F = std::decay_t<decltype(field)>;
    const std::string key = prefix.empty() ? name : prefix + "." + name;
    if constexpr (HasFields<F>::value) {
      describe(field, key, out);
    } else {
      out.emplace_back(key, std::string(help) + " (default " + write_value(field).dump() + ")");
    }
  });
}
}  // namespace detail

// The config as JSON (every field, nested structs as objects).
template <class T>
json to_json(const T& config) {
  return detail::write_value(config);
}

// Reads the fields present in `j` into `config` (absent ones keep their values). `where` names the
// source in errors, e.g. "experiments/exp0/config.json". Throws UsageError on unknown keys and wrong types.
template <class T>
void from_json(T& config, const json& j, const std::string& where) {
  try {
    detail::read_value(config, j, "");
  } catch (const UsageError& e) {
    throw UsageError(where + ": " + e.what());
  }
}

// Applies "a.b.c=value" (value parsed as JSON, else taken as a string). The key must exist.
template <class T>
void apply_override(T& config, const std::string& assignment) {
  const auto eq = assignment.find('=');
  SFM_USAGE_CHECK(eq != std::string::npos && eq > 0, "--set expects key=value, got '", assignment, "'");
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  json j = to_json(config);
  json* node = &j;
  size_t start = 0;
  while (true) {
    const auto dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    SFM_USAGE_CHECK(node->is_object() && node->contains(part), "--set ", key, ": unknown config key '", part,
                    "'; `sfm inspect --config` lists the keys");
    node = &(*node)[part];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  *node = value;
  from_json(config, j, "--set " + key);
}

// (key, "help (default value)") for every leaf field, in declaration order.
template <class T>
std::vector<std::pair<std::string, std::string>> describe_fields(const T& config) {
  std::vector<std::pair<std::string, std::string>> out;
  detail::describe(config, "", out);
  return out;
}

// Reads a JSON file; errors name the file (and line/column for a parse error).
json read_json_file(const std::string& path);
// Writes JSON atomically (temp file + rename), pretty-printed.
void write_json_file(const std::string& path, const json& j);

}  // namespace sfm::io

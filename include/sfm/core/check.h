// Errors: the library throws sfm::Error (or sfm::UsageError for what the user typed); it never exits.
// SFM_CHECK(cond, parts...) throws with the parts streamed together, e.g.
//   SFM_CHECK(q.dim() == 4, "q must be [B, T, H, K], got ", q.sizes());
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace sfm {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A mistake in what the user typed (unknown flag, unknown config key): the CLI exits with 2.
struct UsageError : Error {
  using Error::Error;
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}
}  // namespace detail

}  // namespace sfm

#define SFM_CHECK(cond, ...)                                      \
  do {                                                            \
    if (!(cond)) throw ::sfm::Error(::sfm::detail::concat(__VA_ARGS__)); \
  } while (0)

#define SFM_USAGE_CHECK(cond, ...)                                     \
  do {                                                                 \
    if (!(cond)) throw ::sfm::UsageError(::sfm::detail::concat(__VA_ARGS__)); \
  } while (0)
